#!/usr/bin/env bash
# GPU machine side of bench_parity.py: staging, lanes in the background, polling, the 2-GPU run.
# Run from the repository root (the device tool's working directory). See bench/gpu/README.md for
# the call sequence; each call is one line, e.g.  bash bench/offline/device_parity.sh install 1
#
#   install K            pip-install $WHL/partK (WHL default .whl; carried by this call) into /tmp/site; K=1 also
#                        prints the card, the driver and torch
#   start SPEC...        build the model + both datasets once (foreground, ~1-2 min), then start
#                        one lane per SPEC in the background (setsid: it outlives the call while
#                        the machine stays warm); SPEC = GPU:GROUPS, e.g. 0:parity,batching 1:attrib,qlora
#   wait SECONDS         wait until every lane is done or SECONDS passed; print each lane's progress;
#                        copy what each lane wrote so far to $OUT/<lane>/ (results.json, results.md,
#                        logs.tar.gz: 3 files a lane; the device returns 8 per call). Exit 0 when
#                        all lanes are done, 3 while one still runs (then call wait again at once:
#                        the machine is given back ~30 s after a call ends)
#   stop                 stop every lane (its whole process group) and copy what it wrote, as wait does
#   ddp [GROUPS]         the ddp group (--num-gpus 1 vs 2, hf; or GROUPS, e.g. ddp,ddp-bucket) in the
#                        foreground -> $OUT/ddp/
#   run GROUPS           one lane on GPU 0 in the foreground -> $OUT/gpu0-GROUPS/ (a 1-GPU machine)
set -u
W=/tmp/mgp
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 \
       MLFLOW_DISABLE_TELEMETRY=true UNSLOTH_DISABLE_STATISTICS=1 \
       NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ARGS=${BENCH_ARGS:-}   # e.g. BENCH_ARGS="--steps 30 --rows 1200"
cmd=${1:-}; shift || true

copy_out() {  # lane folder -> $OUT/<lane>/
  local d lane
  for d in "$W"/out-*; do
    [ -f "$d/results.json" ] || continue
    lane=${d##*/out-}; mkdir -p "$OUT/$lane"
    cp "$d"/results.json "$d"/results.md "$OUT/$lane/" 2>/dev/null
    cp "$d"/logs.tar.gz "$OUT/$lane/" 2>/dev/null
  done
}

case "$cmd" in
  install)
    K=$1; T0=$(date +%s)
    if [ "$K" = 1 ]; then
      nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
      python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.device_count(), "GPUs")'
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "${WHL:-.whl}"/part"$K"/*.whl || exit 5
    echo "part $K installed in $(( $(date +%s) - T0 )) s: $(ls /tmp/site | grep -c dist-info) packages in /tmp/site"
    ;;
  start)
    mkdir -p $W
    python3 -c 'import unsloth, trl, mlflow, codecarbon, bitsandbytes; print("trl", trl.__version__, "mlflow", mlflow.__version__)' \
      2>&1 | tail -n 2
    # shellcheck disable=SC2086
    python3 bench/gpu/bench_parity.py --prepare-only --workdir $W/work $ARGS || exit 4
    for spec in "$@"; do
      gpu=${spec%%:*}; groups=${spec#*:}
      # shellcheck disable=SC2086
      setsid nohup python3 bench/gpu/bench_parity.py --gpu "$gpu" --groups "$groups" --workdir $W/work \
        --out "$W/out-gpu$gpu" $ARGS > "$W/lane-gpu$gpu.log" 2>&1 < /dev/null &
      echo $! > "$W/lane-gpu$gpu.pid"   # setsid: the lane leads its own process group (see stop)
      echo "lane gpu$gpu started: $groups (log $W/lane-gpu$gpu.log)"
    done
    ;;
  wait)
    LIMIT=${1:-540}; T0=$(date +%s)
    while pgrep -f "bench_parity.py --gpu" > /dev/null && [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ]; do sleep 5; done
    for f in "$W"/lane-*.log; do echo "== $f"; grep -E '^\{"variant"|^peak|Traceback|Error' "$f" | tail -n 20; done
    copy_out
    if pgrep -f "bench_parity.py --gpu" > /dev/null; then echo "STILL RUNNING: call wait again"; exit 3; fi
    echo "ALL LANES DONE"
    ;;
  stop)
    # the lanes' process groups, by the pids start saved (never `pkill -f PATTERN` in a device
    # command: the command's own bash line contains the pattern, and the call kills itself)
    for f in "$W"/lane-*.pid; do [ -f "$f" ] && kill -- -"$(cat "$f")" 2>/dev/null; rm -f "$f"; done
    # each variant runs in its own session (bench_parity.py start_new_session): stop those too; this
    # script's own command line ("device_parity.sh stop") does not match
    pkill -9 -f 'bench/gpu/(mg_timed|bare_trl)\.py'; sleep 3; copy_out; echo "lanes stopped; what they wrote is under \$OUT"
    ;;
  ddp)
    # shellcheck disable=SC2086
    python3 bench/gpu/bench_parity.py --groups "${1:-ddp}" --workdir $W/work --lane ddp --out "$OUT/ddp" $ARGS
    ;;
  run)
    lane="gpu0-$(echo "$1" | tr -c 'A-Za-z0-9_.\n-' '-')"   # its own name: earlier calls' files are not overwritten
    # shellcheck disable=SC2086
    python3 bench/gpu/bench_parity.py --gpu 0 --lane "$lane" --groups "$1" --workdir $W/work --out "$OUT/$lane" $ARGS
    ;;
  *)
    sed -n '2,20p' "$0"; exit 2
    ;;
esac
