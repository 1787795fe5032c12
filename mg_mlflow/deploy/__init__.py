"""Deployment to vLLM: plan (``plan.py``), supervise (``supervisor.py``, ``state.py``), orchestrate
(``manager.py``), talk to it (``client.py``) and the MLflow deployments plugin (``plugin.py``)."""
