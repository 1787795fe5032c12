#!/usr/bin/env bash
# Stage the official vLLM plus Model Garden's serving dependencies for the borrowed GPU machine
# (Python 3.12, torch 2.11.0+cu130, no network), as parts that travel one per device call.
#
#   bash bench/offline/stage_serve.sh            # here (has the package registries); ~2 min (resolve + download)
#
# 1. resolve: pip's own resolver (dry run, --report) in a throw-away Python 3.12 venv in which the
#    device's big packages are faked as installed, then every package the device already has
#    (bench/offline/device_packages.txt) subtracted;
# 2. download those wheels (--no-deps, manylinux x86_64, cp312);
# 3. tar them (XZ=1: rewrite them uncompressed and xz the tar: a third smaller, but ~11 min of xz on
#    2 idle cores), split into PART_MIB parts: $W/c01, c02, ... (one folder per device call) and the
#    device-side scripts in $W/dev (bench/offline/device_step.sh, device_final.sh).
#
# On the GPU machine, back to back (it is given back ~30 s after a call ends), carrying $W/dev and $W/cKK:
#   call 1..N-1: bash $W/dev/device_step.sh K
#   call N:      bash $W/dev/device_final.sh N && <your commands>
# The working tree travels too (64 MiB per call in all): PART_MIB leaves room for it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
W=${STAGE_DIR:-wheels/serve}
PART_MIB=${PART_MIB:-48}
# trl and datasets: the training half of serve_vision.py and bench_grpo.py
SPECS=${SPECS:-"vllm==0.26.0 mlflow==3.17.2 codecarbon==3.3.2 trl==1.15.0 datasets==4.8.5"}
PY312=${PY312:-$(command -v python3.12 || true)}
[ -x "$PY312" ] || { echo "need a Python 3.12 (set PY312)"; exit 1; }
mkdir -p "$W/tools"

if [ ! -f "$W/tools/need.txt" ]; then
  V=$(mktemp -d)/venv && "$PY312" -m venv "$V" && "$V/bin/pip" install -q -U pip
  SP=$("$V/bin/python" -c 'import site;print(site.getsitepackages()[0])')
  # the device's versions (KINDS.md's pip list): pip must keep them, not upgrade them
  for nv in torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 triton==3.6.0 transformers==5.17.0 \
            numpy==2.5.2 tokenizers==0.23.2 safetensors==0.8.0 huggingface_hub==1.33.0 \
            sentencepiece==0.2.2 tiktoken==0.14.0 accelerate==1.15.0; do
    n=${nv%%==*}; v=${nv##*==}; d=$SP/$n-$v.dist-info; mkdir -p "$d"
    printf 'Metadata-Version: 2.1\nName: %s\nVersion: %s\n' "$n" "$v" > "$d/METADATA"
    echo pip > "$d/INSTALLER"; : > "$d/RECORD"
  done
  # shellcheck disable=SC2086
  "$V/bin/pip" install -q --dry-run --report "$W/tools/report.json" --only-binary=:all: $SPECS
  python3 "$HERE/stage_need.py" "$W/tools/report.json" "$HERE/device_packages.txt" > "$W/tools/need.txt"
  rm -rf "$(dirname "$V")"
fi
echo "$(wc -l < "$W/tools/need.txt") wheels needed"

mkdir -p "$W/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none $(for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux_2_12_x86_64 \
  manylinux2010_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 \
  manylinux_2_31_x86_64 any; do echo --platform $p; done) -d "$W/wheels" -r "$W/tools/need.txt"
du -sh "$W/wheels"

rm -rf "$W/stored" "$W/parts" "$W"/c?? "$W/dev" "$W/bundle.tar"*
if [ "${XZ:-0}" = 1 ]; then
  # ~1/3 smaller (uncompressed wheels under one xz stream), but ~11 min of xz on 2 idle cores and far
  # longer on a busy machine
  python3 "$HERE/stage_need.py" --repack "$W/wheels" "$W/stored"
  tar cf - -C "$W/stored" . | xz -6 -T2 > "$W/bundle.tar.xz" && B="$W/bundle.tar.xz"
else
  tar cf "$W/bundle.tar" -C "$W/wheels" . && B="$W/bundle.tar"   # wheels are deflated already: seconds
fi
mkdir -p "$W/parts" "$W/dev" && split -b "${PART_MIB}M" -d -a 2 "$B" "$W/parts/p."
(cd "$W/parts" && sha256sum p.* | awk '{print $1, $2}') > "$W/dev/parts.sha256"
for f in "$W"/parts/p.*; do
  d="$W/c$(printf %02d $((10#${f##*.} + 1)))"; mkdir -p "$d" && ln "$f" "$d/"
done
cp "$HERE/device_step.sh" "$HERE/device_final.sh" "$W/dev/"
echo "${XZ:-0}" > "$W/dev/xz"
rm -rf "$W/stored" "$B" "$W/parts"
echo "device calls: $(ls -d "$W"/c?? | wc -l) (carry $W/dev and one $W/cKK each)"
