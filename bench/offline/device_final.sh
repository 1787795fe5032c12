#!/usr/bin/env bash
# GPU machine, last staging call: bash wheels/serve/dev/device_final.sh N (N = the last part).
# Waits for the unpacking, installs into the machine's Python (not --target: the wheels ship a .pth
# file and extend the nvidia/cuda namespaces) and puts a `model-garden` command on the PATH that runs
# the Model Garden source carried in wheels/src.
set -u
T0=$(date +%s); D=$(dirname "$0")
bash "$D/device_step.sh" "$1" || exit 3
while [ ! -f /tmp/w/extract.done ]; do
  sleep 0.5; [ $(( $(date +%s) - T0 )) -gt 240 ] && { echo "unpacking not done"; cat /tmp/w/assemble.log; exit 4; }
done
tail -n 1 /tmp/w/assemble.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir /tmp/w/stored/*.whl || exit 5
rm -rf /tmp/w/stored
python3 -m pip check 2>&1 | head -12
python3 -c "import vllm, mlflow, codecarbon; print('vllm', vllm.__version__, 'mlflow', mlflow.__version__)"
echo "installed in $(( $(date +%s) - T0 )) s"
