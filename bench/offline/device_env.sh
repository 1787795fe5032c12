# GPU machine, each call after the install: `source wheels/src/bench/offline/device_env.sh` (from the
# repository root). Model Garden's source travels in wheels/src (PYTHONPATH); `model-garden` runs it.
# PYTHONSAFEPATH: `python -m` must not put the current folder (a checkout with its own mg_mlflow)
# ahead of PYTHONPATH
export PYTHONSAFEPATH=1 PYTHONPATH=$PWD/wheels/src MG_HOME=/tmp/mg HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 PYTHONUNBUFFERED=1 \
       DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# written aside and renamed: rewriting it in place while a job runs it fails that job (ETXTBSY)
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m mg_mlflow "$@"\n' > /tmp/bin/.mg.$$ && chmod +x /tmp/bin/.mg.$$ &&
  mv -f /tmp/bin/.mg.$$ /tmp/bin/model-garden
export PATH=/tmp/bin:$(dirname "$(command -v python3)"):$PATH
