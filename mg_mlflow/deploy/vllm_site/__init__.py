"""Start-up hook for the Python processes of a vLLM server that serves a vision model.

This folder goes first on that server's ``PYTHONPATH`` (``mg_mlflow.deploy.vision`` decides when), so
its ``sitecustomize`` runs in vLLM's API server and in every process vLLM starts. It is never
imported as part of Model Garden.
"""
