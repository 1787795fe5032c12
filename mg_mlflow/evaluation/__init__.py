"""Evaluate a registered model on a dataset with references, locally or through a deployment.

Modules, one job each: ``data`` (load the evaluation set), ``metrics`` (scores against references),
``local`` (teacher-forced loss and batched generation in-process), ``remote`` (generation through a
deployment's OpenAI endpoint), ``lmeval`` (lm-evaluation-harness tasks), ``record`` (the MLflow
evaluation run and the version tags) and ``runner`` (the whole evaluation, top to bottom).
"""
