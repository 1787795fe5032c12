#!/usr/bin/env bash
# GPU machine side of the serving benchmark, after device_final.sh and serve_models.py.
# Run from the repository root (the device tool's working directory), with wheels/src carried:
#
#   bash wheels/src/bench/offline/device_serve.sh start     the jobs in the background (setsid: they
#                                                       outlive the call while the machine stays warm)
#   bash wheels/src/bench/offline/device_serve.sh wait S    wait until the jobs end or S seconds pass; print
#                                                       their progress; copy what they wrote to $OUT
#                                                       (JSON + one tar of logs). Exit 3 while one runs:
#                                                       call wait again at once (the machine is given
#                                                       back ~30 s after a call ends)
#   bash wheels/src/bench/offline/device_serve.sh stop      stop the jobs (process groups) and every
#                                                       deployment, then copy as wait does
#
# 4 GPUs: job a = bench_serve.py --mode graphs-cold --skip-lora on GPUs 0,1 (deploy vs bare with
# vLLM's default flags, cold, then 1/8/64 concurrent requests twice, warm restart) while job b =
# bench_lora.py (CUDA graphs) on GPUs 2,3, then serve_gpu.py --only int4 on GPU 2.
# Fewer GPUs: one job, bench_serve.py with its LoRA step, then the INT4 check on GPU 0.
set -u
D=bench/gpu; [ -f wheels/src/$D/bench_serve.py ] && D=wheels/src/$D
# shellcheck disable=SC1091
source "$D/../offline/device_env.sh"
W=/tmp/sv
cmd=${1:-}; shift || true

copy_out() {
  local f
  for f in "$W"/a/bench.json "$W"/b/lora.json "$W"/b/functional.json "$W"/a/functional.json; do
    [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")_$(basename "$f")"
  done
  # logs: the jobs' own, the bare vLLM log, the deployments' vLLM logs (MG_HOME), each cut to 3 MB
  rm -rf /tmp/svlogs && mkdir -p /tmp/svlogs
  for f in "$W"/*.log "$W"/*/*.log "$W"/*/*.txt $(find "$MG_HOME" -name '*.log' 2>/dev/null); do
    [ -f "$f" ] && tail -c 3000000 "$f" > "/tmp/svlogs/$(echo "${f#/tmp/}" | tr '/' '_')"
  done
  tar czf "$OUT/logs.tar.gz" -C /tmp/svlogs . 2>/dev/null
}

running() {
  local f
  for f in "$W"/job-*.pid; do [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0; done
  return 1
}

case "$cmd" in
  start)   # start [no-int4]; BENCH_ARGS (e.g. "--scale 4 --rounds 3") go to both benchmarks, SERVE_ARGS
           # to bench_serve.py alone (e.g. "--gpus 1,0": the deployment on GPU 1, bare vLLM on GPU 0)
    [ -d $W ] && mv $W "$W.$(date +%s)"   # an earlier start's results stay on the machine
    mkdir -p $W/a $W/b
    n=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
    if [ "$n" -ge 4 ]; then
      setsid nohup python3 $D/bench_serve.py --out $W/a --mode graphs-cold --skip-lora --budget 900 ${BENCH_ARGS:-} ${SERVE_ARGS:-} \
        > $W/job-a.log 2>&1 < /dev/null &
      echo $! > $W/job-a.pid
      INT4="python3 $D/serve_gpu.py --out $W/b --eager --only int4 --gpu 2"; [ "${1:-}" = no-int4 ] && INT4=true
      setsid nohup bash -c "python3 $D/bench_lora.py --out $W/b --gpus 2,3 ${BENCH_ARGS:-}; $INT4" > $W/job-b.log 2>&1 < /dev/null &
      echo $! > $W/job-b.pid
      echo "$n GPUs: job a (deploy vs bare, GPUs 0,1) and job b (LoRA vs merged on 2,3, then INT4 on 2) started"
    else
      setsid nohup bash -c "python3 $D/bench_serve.py --out $W/a --mode graphs-cold --budget 900 ${BENCH_ARGS:-} ${SERVE_ARGS:-}; \
        python3 $D/serve_gpu.py --out $W/a --eager --only int4 --gpu 0" > $W/job-a.log 2>&1 < /dev/null &
      echo $! > $W/job-a.pid
      echo "$n GPUs: one job (deploy vs bare with its LoRA step, then INT4 on GPU 0) started"
    fi
    ;;
  wait)
    LIMIT=${1:-540}; T0=$(date +%s)
    while running && [ $(( $(date +%s) - T0 )) -lt "$LIMIT" ]; do sleep 5; done
    for f in "$W"/job-*.log; do echo "== $f"; tail -n 15 "$f" | cut -c1-400; done
    nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader | cut -c1-120
    copy_out
    if running; then echo "STILL RUNNING: call wait again"; exit 3; fi
    echo "ALL JOBS DONE"
    ;;
  stop)
    for f in "$W"/job-*.pid; do [ -f "$f" ] && kill -- -"$(cat "$f")" 2>/dev/null; done
    pkill -9 -f "vllm serve|vllm.entrypoints"  # bare vLLM leads its own session
    sleep 2
    for name in $(model-garden deployments list --json 2>/dev/null | python3 -c \
        'import json, sys; print(" ".join(r["name"] for r in json.load(sys.stdin)))' 2>/dev/null); do
      model-garden deployments stop "$name"
    done
    copy_out; echo "jobs stopped"
    ;;
  *)
    sed -n '2,20p' "$0"; exit 2
    ;;
esac
