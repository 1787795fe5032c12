#!/usr/bin/env bash
# GPU machine, one call per part: bash wheels/serve/dev/device_step.sh K  (made by stage_serve.sh).
# Call 1 starts the background unpacker, which outlives the call and feeds the parts in order through
# sha256, (xz -d) and tar x into /tmp/w/stored; later calls only drop their part next to it.
set -u
W=/tmp/w; D=$(dirname "$0"); K=$1; KK=$(printf %02d "$K")
if [ "$K" = 1 ]; then
  rm -rf $W; mkdir -p $W/stored
  cat /proc/sys/kernel/random/boot_id > $W/boot_id
  cp "$D/parts.sha256" $W/
  if [ "$(cat "$D/xz" 2>/dev/null)" = 1 ]; then UNPACK="xz -dc -T0"; else UNPACK=cat; fi
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.device_count(), "GPUs")'
  { echo "UNPACK='$UNPACK'"; cat <<'EOS'
W=/tmp/w; t0=$(date +%s); set -o pipefail
( while read -r sum name; do
    while [ ! -f "$W/$name" ]; do sleep 0.2; done
    echo "$sum  $W/$name" | sha256sum -c --quiet >&2 || echo "BADSUM $name" >&2
    cat "$W/$name" && rm -f "$W/$name"; echo "t+$(( $(date +%s) - t0 ))s fed $name" >&2
  done < $W/parts.sha256 ) | $UNPACK | tar x -C $W/stored
echo "EXTRACT rc=$? after $(( $(date +%s) - t0 ))s: $(ls $W/stored | wc -l) wheels"; touch $W/extract.done
EOS
  } > $W/assemble.sh
  setsid nohup bash $W/assemble.sh > $W/assemble.log 2>&1 < /dev/null &
elif [ ! -f $W/boot_id ]; then
  echo "LOST: a fresh machine (no $W); parts sent earlier are gone: start again at call 1"; exit 3
fi
for f in "$D/../c$KK"/*; do b=$(basename "$f"); cp "$f" "$W/$b.tmp" && mv "$W/$b.tmp" "$W/$b"; done
sleep 1
echo "call $K: $(tail -n 1 $W/assemble.log 2>/dev/null) | unpacked $(du -sm $W/stored | cut -f1) MiB"
