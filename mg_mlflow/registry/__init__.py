"""Model Registry: log, verify and register models; resolve registry URIs to local folders.

Public entry points:
- :func:`mg_mlflow.registry.resolve.resolve_model_uri` - any models:/, runs:/, m-<id> URI or folder
  to a local Hugging Face folder (cached per version) plus its Model Garden metadata.
- :func:`mg_mlflow.registry.loader.load_transformers` - a registered model back as transformers /
  peft objects (the documented loader for adapters whose base was a local folder).
"""
