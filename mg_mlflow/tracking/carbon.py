"""Carbon and energy tracking (codecarbon) as MLflow metrics. Placeholder until issue 3 lands.

Contract used by the training recipe:
- ``training_callback(cfg, output_dir)`` returns a transformers ``TrainerCallback`` (or None when
  carbon is off) that logs ``carbon/*`` metrics at the trainer's global step;
- the callback's ``totals()`` returns final figures, logged as metrics and as version tags.
"""

from __future__ import annotations


def training_callback(cfg, output_dir):
    return None
