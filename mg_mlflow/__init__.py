"""Model Garden on MLflow: fine-tune, track, register and deploy LLMs and VLMs.

Importing this package is cheap: heavy libraries (torch, transformers, mlflow, vllm) are imported
inside the functions that need them.
"""

__version__ = "0.1.0"
