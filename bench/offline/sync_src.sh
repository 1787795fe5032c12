#!/usr/bin/env bash
# Copy Model Garden's source (mg_mlflow/, bench/) into wheels/src, the git-ignored folder the
# device calls carry (`carry: ["wheels/src"]`), and, when the checkout that travels to the device
# machine is another one (DEVICE_ROOT, e.g. the main checkout of a worktree setup), mirror wheels/
# there with hard links.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf wheels/src && mkdir -p wheels/src/bench
cp -r mg_mlflow pyproject.toml wheels/src/ && cp -r bench/*.py bench/gpu bench/offline wheels/src/bench/
find wheels/src -name __pycache__ -prune -exec rm -rf {} +
if [ -n "${DEVICE_ROOT:-}" ] && [ "$(realpath "$DEVICE_ROOT")" != "$(pwd)" ]; then
  mkdir -p "$DEVICE_ROOT/wheels"
  rm -rf "$DEVICE_ROOT/wheels/src" && cp -r wheels/src "$DEVICE_ROOT/wheels/src"
  if [ -d wheels/serve ]; then
    rm -rf "$DEVICE_ROOT/wheels/serve" && mkdir -p "$DEVICE_ROOT/wheels/serve"
    for d in wheels/serve/dev wheels/serve/c??; do cp -al "$d" "$DEVICE_ROOT/wheels/serve/"; done
  fi
fi
du -sh wheels/src
