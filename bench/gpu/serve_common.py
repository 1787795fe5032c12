"""Helpers of the GPU serving checks and benchmark: the CLI as a user runs it, GPU processes, requests."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def mg(*args: str, gpus: str | None = None, env: dict | None = None, timeout: float = 600) -> dict:
    """Run ``model-garden ARGS`` (the installed command); rc, output and seconds."""
    full = {**os.environ, **(env or {})}
    if gpus is not None:
        full["CUDA_VISIBLE_DEVICES"] = gpus
    t = time.time()
    try:
        p = subprocess.run(["model-garden", *args], capture_output=True, text=True, env=full, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, str(exc.stdout or ""), str(exc.stderr or "")
    res = {"cmd": "model-garden " + " ".join(args), "rc": rc, "seconds": round(time.time() - t, 2),
           "stdout": out[-4000:], "stderr": err[-6000:]}
    log(f"{res['cmd'][:110]} -> rc {rc} in {res['seconds']} s")
    return res


def gpu_processes() -> list[dict]:
    """Compute processes on any GPU (nvidia-smi), with the GPU's index."""
    uuids = {}
    q = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                       text=True).stdout
    for line in q.strip().splitlines():
        i, u = [x.strip() for x in line.split(",")]
        uuids[u] = int(i)
    q = subprocess.run(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    out = []
    for line in q.strip().splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 3:
            out.append({"gpu": uuids.get(parts[0]), "pid": int(parts[1]), "mib": int(parts[2])})
    return out


def gpu_processes_on(gpu: int, settle: float = 15.0) -> list[dict]:
    """Processes on ``gpu``, waiting up to ``settle`` s for exiting ones to disappear."""
    deadline = time.time() + settle
    while True:
        procs = [p for p in gpu_processes() if p["gpu"] == gpu]
        if not procs or time.time() > deadline:
            return procs
        time.sleep(0.5)


def record(name: str) -> dict | None:
    p = subprocess.run(["model-garden", "deployments", "list", "--json"], capture_output=True, text=True)
    try:
        return next((r for r in json.loads(p.stdout) if r["name"] == name), None)
    except ValueError:
        return None


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def complete(base: str, model: str, prompt: str, max_tokens: int = 24) -> dict:
    """Greedy /v1/completions through the OpenAI client; text, token ids' count and usage."""
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key="none")
    r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                  extra_body={"ignore_eos": True})
    return {"text": r.choices[0].text, "completion_tokens": r.usage.completion_tokens,
            "prompt_tokens": r.usage.prompt_tokens}


def wait_health(port: int, proc: subprocess.Popen | None = None, timeout: float = 600) -> float | None:
    t = time.time()
    while time.time() - t < timeout:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t
        except OSError:
            pass
        time.sleep(0.25)
    return None


def local_dir(uri: str) -> str:
    """The folder a registry URI resolves to (what vLLM is given), via the CLI's dry run."""
    res = mg("deploy", uri, "--dry-run")
    for line in res["stdout"].splitlines():
        if "->" in line:
            return line.split("->")[-1].strip()
    raise RuntimeError(f"no folder in dry run of {uri}: {res}")


def log_numbers(path: str | Path) -> dict:
    """Start-up breakdown from a vLLM log (seconds / GiB as vLLM prints them)."""
    import re

    text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    pats = {"model_load_gib": r"Model loading took ([\d.]+) GiB", "model_load_s": r"Model loading took [\d.]+ GiB.*?([\d.]+) s",
            "weights_load_s": r"Loading weights took ([\d.]+) seconds",
            "dynamo_bytecode_s": r"Dynamo bytecode transform time: ([\d.]+) s",
            "compile_s": r"torch.compile takes ([\d.]+) s in total",
            "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs?",
            "engine_init_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) seconds",
            "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
            "kv_tokens": r"GPU KV cache size: ([\d,]+) tokens",
            "quantization": r"quantization=(\S+?),"}
    out = {}
    for key, pat in pats.items():
        m = re.findall(pat, text)
        if m:
            val = m[-1].replace(",", "")
            try:
                out[key] = float(val)
            except ValueError:
                out[key] = val
    return out


def save(out: Path, name: str, data) -> None:
    (out / name).write_text(json.dumps(data, indent=1, default=str))
