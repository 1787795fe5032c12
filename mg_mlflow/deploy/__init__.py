"""Deployment to vLLM. Imports point one way, from the bottom up:

- ``keyguard`` (the API key on every route, loaded by vLLM itself; standard library only),
  ``net`` (connect host, loopback, free port, /health), ``private`` (0700 folders, 0600 files), ``gpus``,
  ``plan`` (the vLLM command), ``options`` (DeployOptions as CLI options and plugin keys);
- ``state`` (the :class:`~mg_mlflow.deploy.state.Deployment` record, its JSON file and status),
  ``ports`` (atomic port and name claims);
- ``supervisor`` (launch under ``guard``, wait for health, stop), ``launch`` (start a deployment),
  ``update`` (a new version beside the old one), ``manager`` (the library's entry points);
- ``client`` (OpenAI client helpers) and ``plugin`` (the MLflow deployments target ``vllm``).

Processes (pid identity, process groups) are ``mg_mlflow.proc``'s.
"""
