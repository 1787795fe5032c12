"""GPU serving checks: `model-garden deploy` of registry URIs with the official vLLM, as a user runs it.

    python3 bench/gpu/serve_gpu.py --out $OUT [--eager]     # after serve_models.py registered the models

Two lanes run side by side, one per GPU (CUDA_VISIBLE_DEVICES), then tensor parallel over both:
  GPU 0: two adapters on one server (their registered base resolved); the merged model; the FP8
         compressed-tensors checkpoint; the merged model with a leftover bitsandbytes config (and a
         bare `vllm serve` of that folder, which must fail: the plan's override is what makes it serve);
  GPU 1: the vision-language model answering an OpenAI `image_url` request; a second deployment on a
         GPU that is already taken and one that cannot fit (clear error, hint, nothing left running);
  both:  tensor parallel planned from the machine (GPU count and memory).
`--only fp8,int4` serves the quantized checkpoints alone (gpu-fp8, gpu-int4: compressed-tensors FP8 and
W4A16 from serve_models.py; `--gpu N` picks the card), each with its dry-run plan, and then checks vLLM's
greedy answer against transformers' on the same folder (compressed-tensors decompresses it on load), so
a checkpoint that loads but computes the wrong function fails the comparison.
Each deployment answers through `model-garden generate` and the OpenAI client, and is stopped with
`model-garden deployments stop`, after which nvidia-smi must show no process on its GPU.
Results: $OUT/functional.json (+ the error text of the failing deployments).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import complete, gpu_processes, gpu_processes_on, local_dir, log, log_numbers, mg, record, save, wait_health  # noqa: E402

PROMPT = "The quick brown fox"
RESULTS: dict = {}
LOCK = threading.Lock()


def put(key: str, value) -> None:
    with LOCK:
        RESULTS[key] = value


def served(name: str, uris: list[str], gpu: str, flags: list[str], models: list[str], out: Path, port: int,
           keep_log: bool = False) -> dict:
    """Deploy, answer through generate + OpenAI, stop, check the GPU is empty."""
    res: dict = {"deploy": mg("deploy", *uris, "--name", name, "--port", str(port), *flags, gpus=gpu)}
    rec = record(name)
    if res["deploy"]["rc"] != 0 or rec is None:
        return res
    res["startup_s"] = rec.get("startup_s")
    res["command"] = rec.get("command")
    res["notes"] = rec.get("notes")
    base = f"http://127.0.0.1:{rec['port']}/v1"
    res["generate"] = mg("generate", name, "--prompt", "Hello", "--max-tokens", "12")
    res["openai"] = {}
    for m in models:
        try:
            res["openai"][m] = complete(base, m, PROMPT)
        except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
            res["openai"][m] = {"error": repr(exc)}
    res["gpu_processes_serving"] = [p for p in gpu_processes() if str(p["gpu"]) in gpu.split(",")]
    res["log_numbers"] = log_numbers(rec["log_file"])
    res["log_tail"] = subprocess.run(["tail", "-n", "5", rec["log_file"]], capture_output=True, text=True).stdout
    if keep_log:
        (out / f"{name}_vllm.log").write_text(Path(rec["log_file"]).read_text(errors="replace")[-3_000_000:])
    res["stop"] = mg("deployments", "stop", name)
    res["gpu_processes_after_stop"] = [p for g in gpu.split(",") for p in gpu_processes_on(int(g))]
    res["record_after_stop"] = record(name)
    return res


def lane0(flags: list[str], out: Path) -> None:
    put("two_adapters", served("loras", ["models:/gpu-lora-a@champion", "models:/gpu-lora-b@champion"], "0", flags,
                               ["gpu-llama", "gpu-lora-a", "gpu-lora-b"], out, 8000))
    put("merged", served("merged", ["models:/gpu-merged@champion"], "0", flags, ["gpu-merged"], out, 8001,
                             keep_log=True))
    put("fp8_plan", mg("deploy", "models:/gpu-fp8@champion", "--dry-run", gpus="0"))
    put("fp8", served("fp8", ["models:/gpu-fp8@champion"], "0", flags, ["gpu-fp8"], out, 8002))
    put("bnb_plan", mg("deploy", "models:/gpu-bnb-leftover@champion", "--dry-run", gpus="0"))
    put("bnb_leftover", served("bnb", ["models:/gpu-bnb-leftover@champion"], "0", flags, ["gpu-bnb-leftover"], out, 8003))
    # the same folder without the plan's override: bare vLLM must refuse it
    folder = local_dir("models:/gpu-bnb-leftover@champion")
    t = time.time()
    logf = Path("/tmp/bnb_bare_vllm.log")
    with open(logf, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--port",
                              "8190", "--enforce-eager"], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    healthy = wait_health(8190, p, timeout=240)
    if p.poll() is None:
        os.killpg(p.pid, 9)
    err = [line for line in logf.read_text(errors="replace").splitlines() if "Error" in line][-6:]
    put("bnb_bare_vllm", {"rc": p.wait(), "served": healthy is not None, "seconds": round(time.time() - t, 1),
                          "error_lines": err})
    put("gpu0_after_all", gpu_processes_on(0))


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (220, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def lane1(flags: list[str], out: Path) -> None:
    res: dict = {"deploy": mg("deploy", "models:/gpu-vl@champion", "--name", "vl", "--port", "8100", *flags, gpus="1")}
    rec = record("vl")
    if rec:
        res["startup_s"], res["command"] = rec.get("startup_s"), rec.get("command")
        img = Path("/tmp/red.png")
        img.write_bytes(_png())
        res["generate_image"] = mg("generate", "vl", "--prompt", "What colour is the shape?", "--image", str(img),
                                   "--max-tokens", "8")
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{rec['port']}/v1", api_key="none")
        data = "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()
        for key, content in (("with_image", [{"type": "image_url", "image_url": {"url": data}},
                                             {"type": "text", "text": "What colour is the shape?"}]),
                             ("text_only", [{"type": "text", "text": "What colour is the shape?"}])):
            try:
                r = client.chat.completions.create(model="gpu-vl", messages=[{"role": "user", "content": content}],
                                                   max_tokens=8, temperature=0)
                res[key] = {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens}
            except Exception as exc:  # noqa: BLE001
                res[key] = {"error": repr(exc)}
        # a second deployment on the GPU the VL model holds (vLLM's default 0.9 of its memory)
        taken = mg("deploy", "models:/gpu-merged@champion", "--name", "taken", "--port", "8101", *flags, gpus="1")
        (out / "error_gpu_taken.txt").write_text(taken["stderr"])
        put("gpu_taken", {**taken, "record_after": record("taken")})
        res["log_numbers"] = log_numbers(rec["log_file"])
        res["stop"] = mg("deployments", "stop", "vl")
    res["gpu_processes_after_stop"] = gpu_processes_on(1)
    put("vision", res)
    # a model that cannot fit: 1% of the GPU for ~2 GB of weights
    oom = mg("deploy", "models:/gpu-merged@champion", "--name", "oom", "--port", "8102", "--gpu-memory-utilization",
             "0.01", *flags, gpus="1")
    (out / "error_no_fit.txt").write_text(oom["stderr"])
    from mg_mlflow.deploy.state import log_path

    if log_path("oom").is_file():
        (out / "no_fit_vllm_log_tail.txt").write_text("\n".join(log_path("oom").read_text(errors="replace").splitlines()[-400:]))
    put("no_fit", {**oom, "record_after": record("oom"), "gpu_processes_after": gpu_processes_on(1)})


def tensor_parallel(flags: list[str], out: Path) -> None:
    plan = mg("deploy", "models:/gpu-merged@champion", "--gpu-memory-utilization", "0.03", "--dry-run")
    put("tp_plan", plan)
    res = served("tp", ["models:/gpu-merged@champion"], "0,1", ["--gpu-memory-utilization", "0.03", *flags],
                 ["gpu-merged"], out, 8200, keep_log=True)
    if res["deploy"]["rc"] != 0:  # the planned budget was too tight for vLLM: say so, then the explicit form
        res["explicit"] = served("tp2", ["models:/gpu-merged@champion"], "0,1", ["--tensor-parallel-size", "2", *flags],
                                 ["gpu-merged"], out, 8201)
    put("tensor_parallel", res)


HF_GREEDY = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda").eval()
ids = tok(prompt, return_tensors="pt").input_ids.to("cuda")
out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
print(json.dumps({"text": tok.decode(out[0, ids.shape[1]:]), "layer0_up": type(model.model.layers[0].mlp.up_proj).__name__}))
"""


def hf_greedy(uri: str, gpu: str, n: int = 24) -> dict:
    """transformers' greedy continuation of PROMPT on the folder ``uri`` resolves to (a fresh process on ``gpu``)."""
    import json

    folder = local_dir(uri)
    p = subprocess.run([sys.executable, "-c", HF_GREEDY, folder, PROMPT, str(n)], capture_output=True, text=True,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, timeout=600)
    if p.returncode != 0:
        return {"rc": p.returncode, "stderr": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def quantized(key: str, port: int, gpu: str, flags: list[str], out: Path) -> None:
    """The plan, the deployment (answers, stop, empty GPU), then vLLM's greedy text against transformers'."""
    uri = f"models:/gpu-{key}@champion"
    put(f"{key}_plan", mg("deploy", uri, "--dry-run", gpus=gpu))
    res = served(key, [uri], gpu, flags, [f"gpu-{key}"], out, port, keep_log=True)
    vllm_text = (res.get("openai", {}).get(f"gpu-{key}") or {}).get("text")
    ref = {"hf": hf_greedy(uri, gpu), "hf_bf16_merged": hf_greedy("models:/gpu-merged@champion", gpu)}
    if vllm_text is not None and "text" in ref["hf"]:
        ref["vllm_text"] = vllm_text
        ref["common_prefix_chars"] = common_prefix(vllm_text, ref["hf"]["text"])
        ref["common_prefix_with_bf16_merged"] = common_prefix(vllm_text, ref["hf_bf16_merged"].get("text", ""))
    res["reference"] = ref
    put(key, res)


def guarded(func, *args) -> None:
    try:
        func(*args)
    except Exception as exc:  # noqa: BLE001 - one broken step must not lose the others' results
        import traceback

        put(f"error_{func.__name__}", traceback.format_exc()[-3000:])
        log(f"{func.__name__} failed: {exc!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--eager", action="store_true", help="pass --enforce-eager (start in seconds, not minutes)")
    ap.add_argument("--only", default="lanes,tp", help="comma-separated: lanes, fp8, int4, tp")
    ap.add_argument("--gpu", default="0", help="the GPU of the quantized checkpoints (fp8, int4)")
    args = ap.parse_args()
    flags = ["--enforce-eager"] if args.eager else []
    put("gpus_before", gpu_processes())
    t = time.time()
    if "lanes" in args.only:
        threads = [threading.Thread(target=guarded, args=(f, flags, args.out)) for f in (lane0, lane1)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            time.sleep(5)
            save(args.out, "functional.json", RESULTS)
    for key, port in (("fp8", 8002), ("int4", 8004)):  # quantized checkpoints: the plan, then served
        if key in args.only:
            guarded(quantized, key, port, args.gpu, flags, args.out)
    if "tp" in args.only:
        guarded(tensor_parallel, flags, args.out)
    put("gpus_after", gpu_processes())
    put("seconds", round(time.time() - t, 1))
    save(args.out, "functional.json", RESULTS)
    log(summary(RESULTS))


def summary(r: dict) -> str:
    rows = []
    for key, v in r.items():
        if isinstance(v, dict) and "deploy" in v:
            oa = {m: (x.get("text") or x.get("error", ""))[:24] for m, x in (v.get("openai") or {}).items()}
            rows.append(f"{key}: deploy rc {v['deploy']['rc']} startup {v.get('startup_s')} s; openai {oa}; "
                        f"after stop {v.get('gpu_processes_after_stop')}")
        elif isinstance(v, dict) and "rc" in v:
            rows.append(f"{key}: rc {v['rc']} {v.get('stderr', '')[-300:]!r}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
