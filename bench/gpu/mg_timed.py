"""`model-garden train`, in this process, with the bench's meter attached (and optional toggles).

    python bench/gpu/mg_timed.py --meter-out run.json [--warmup 5] [--meter grpo] [TOGGLES] -- train --base-model ...

Everything after ``--`` is the ordinary `model-garden` command line and goes to the real CLI
(``mg_mlflow.cli.main``), so the run is exactly what a user gets; the only additions are
:mod:`meter` (two device syncs in the whole run, no per-step one) attached to the trainer the text
recipe builds, and, when asked, a toggle for a cost that has no option of its own:

- ``--no-tokens-seen``: ``include_num_input_tokens_seen="no"`` instead of the platform's
  "non_padding" (which gathers and ``.item()``s a count every micro-batch: a device sync each step).
  Model Garden then logs no ``trained_tokens`` / ``tokens_per_second``; the meter still counts tokens.
  HOOK NEEDED to do without this patch: a TrainConfig field (e.g. ``count_tokens: bool``) read by
  ``training/common.py trainer_kwargs``.
- ``--load-seq N``: Unsloth's load-time ``max_seq_length`` = N instead of the config's
  ``max_seq_length`` (TRL's ``max_length`` stays). HOOK NEEDED: a ``load_max_seq_length`` field read
  by ``training/backends.py load_unsloth``.

Per-step logging, system metrics and carbon already have options (``--logging-steps``,
``--no-system-metrics``, ``--no-carbon``) and are toggled on the command line, not here.
Each patch is checked: the meter records what the trainer really used (``eff_tokens_seen``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def patch(opts, meter_box: dict):
    """Apply the meter (and the toggles); returns a function that undoes every patch."""
    import mg_mlflow.training.backends as backends
    import mg_mlflow.training.text as text

    original_trainer = text.TextModality.trainer

    def trainer(self, *args, **kwargs):
        built = original_trainer(self, *args, **kwargs)
        if str(HERE) not in sys.path:
            sys.path.insert(0, str(HERE))
        import importlib

        meter = importlib.import_module("grpo_meter" if opts.meter == "grpo" else "meter")
        meter_box["meter"] = meter.attach(built, opts.warmup)
        return built

    text.TextModality.trainer = trainer
    undo = [lambda: setattr(text.TextModality, "trainer", original_trainer)]

    if opts.no_tokens_seen:  # the name the sft objective's sft_config calls
        import mg_mlflow.training.objectives.sft as sft

        original_kwargs = sft.trainer_kwargs

        def trainer_kwargs(*args, **kwargs):
            out = original_kwargs(*args, **kwargs)
            out["include_num_input_tokens_seen"] = "no"
            return out

        sft.trainer_kwargs = trainer_kwargs
        undo.append(lambda: setattr(sft, "trainer_kwargs", original_kwargs))

    if opts.load_seq:
        original_load = backends.load_unsloth

        def load_unsloth(cfg, base, revision):
            return original_load(dataclasses.replace(cfg, max_seq_length=opts.load_seq), base, revision)

        backends.load_unsloth = load_unsloth
        undo.append(lambda: setattr(backends, "load_unsloth", original_load))
    return lambda: [fn() for fn in reversed(undo)]


def run(argv: list[str]) -> dict:
    """Run ``[options] -- <model-garden args>``; the meter's result (with ``exit_code``)."""
    if "--" not in argv:
        raise SystemExit("usage: mg_timed.py [options] -- train --base-model ... (the model-garden command line)")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meter-out", default="")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--meter", choices=["sft", "grpo"], default="sft",
                   help="meter.py (tokens of the training batches) or grpo_meter.py (completions, generation time)")
    p.add_argument("--no-tokens-seen", action="store_true")
    p.add_argument("--load-seq", type=int, default=0)
    opts = p.parse_args(argv[:cut])
    box: dict = {}
    undo = patch(opts, box)
    from mg_mlflow.cli import cli

    code = 0
    try:  # standalone: usage errors and MGError print their message and exit like `model-garden`
        cli.main(args=argv[cut + 1:], prog_name="model-garden", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        undo()
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import meter

    result = box["meter"].result() if "meter" in box else {"meter_error": "no trainer was built"}
    result.update({"toggle_no_tokens_seen": opts.no_tokens_seen, "toggle_load_seq": opts.load_seq, "exit_code": code})
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    meter.write(opts.meter_out, result)
    return result


def main() -> int:
    return run(sys.argv[1:])["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
