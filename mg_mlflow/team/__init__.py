"""A team's platform: a shared MLflow tracking server (``server.py``) and training jobs queued on
Ray (``ray_local.py``, ``submit.py``, ``entry.py``, ``jobs.py``). MLflow keeps the record, Ray keeps
the queue; Model Garden only wires them together."""
