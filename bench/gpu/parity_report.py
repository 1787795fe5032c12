"""Ratios and the markdown report of bench_parity.py, and the results writer.

    # after the device calls, with each lane's files fetched (results.json + logs.tar.gz per folder):
    python bench/gpu/parity_report.py /work/.device/.../gpu0 /work/.device/.../gpu1 \
        --to bench/results/$(date +%F)-parity
    # -> <lane>.json (every row), <lane>-mlflow_runs.json (the MLflow runs as JSON), summary.md

CPU smoke results are refused (they prove plumbing, not speed): the writer checks ``meta.cpu_smoke``
and that the card is a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path


def _key(r: dict, *skip: str) -> tuple:
    fields = ("backend", "method", "shape", "batching", "toggle", "num_gpus", "side")
    return tuple(r.get(f) for f in fields if f not in skip)


def _ok(r: dict) -> bool:
    return not r.get("error") and bool(r.get("tokens_per_s"))


def ratios(rows: list[dict]) -> list[dict]:
    """Every comparison the issue asks for that these rows allow; each names both variants."""
    good = [r for r in rows if _ok(r)]
    out = []

    def add(kind, a, b, value, note=""):
        out.append({"kind": kind, "a": a["variant"], "b": b["variant"], "ratio": value, "note": note})

    for r in good:  # platform / bare, same data, batching, method (target >= 0.95)
        if r["side"] == "mg" and not r["toggle"] and r["num_gpus"] == 1:
            for b in good:
                if b["side"] == "bare" and _key(b, "side") == _key(r, "side"):
                    add("platform/bare tok/s", r, b, r["tokens_per_s"] / b["tokens_per_s"], "target >= 0.95")
    for r in good:  # unsloth / hf, same side and everything else (target >= 1.6 on var, mg)
        if r["backend"] == "unsloth" and not r["toggle"] and r["num_gpus"] == 1:
            for h in good:
                if h["backend"] == "hf" and _key(h, "backend") == _key(r, "backend"):
                    add("unsloth/hf tok/s", r, h, r["tokens_per_s"] / h["tokens_per_s"],
                        "target >= 1.6 (mg, var)" if r["side"] == "mg" and r["shape"] == "var" else "")
    for r in good:  # batching mode / padded
        if r["batching"] != "padded" and not r["toggle"] and r["num_gpus"] == 1:
            for p in good:
                if p["batching"] == "padded" and _key(p, "batching") == _key(r, "batching"):
                    add("batching/padded tok/s", r, p, r["tokens_per_s"] / p["tokens_per_s"])
    for r in good:  # attribution: what the toggled cost takes away from full tracking
        if r["toggle"]:
            for f in good:
                if not f["toggle"] and _key(f, "toggle") == _key(r, "toggle"):
                    add("toggled/full tok/s", r, f, r["tokens_per_s"] / f["tokens_per_s"],
                        "> 1: switching it off is faster by this factor")
    for r in good:  # several GPUs, both from Model Garden's MLflow record (target >= 1.8)
        if r["num_gpus"] > 1:
            for s in good:
                if s["num_gpus"] == 1 and _key(s, "num_gpus") == _key(r, "num_gpus") and s.get("mg_tokens_per_s"):
                    value = (r.get("mg_tokens_per_s") or 0) / s["mg_tokens_per_s"]
                    add(f"{r['num_gpus']} GPUs/1 tok/s (MLflow, median)", r, s, value, "target >= 1.8")
                    if r.get("mg_tokens_per_s_last") and s.get("mg_tokens_per_s_last"):
                        add(f"{r['num_gpus']} GPUs/1 tok/s (MLflow, last window)", r, s,
                            r["mg_tokens_per_s_last"] / s["mg_tokens_per_s_last"],
                            "target >= 1.8; the settled figure when early windows still warm up")
    return out


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def lane_markdown(res: dict) -> str:
    m = res["meta"]
    ver = m["versions"]
    done = "" if m.get("complete", True) else f" (INCOMPLETE: {len(res['rows'])} of {len(m.get('planned', []))} variants)"
    lines = [f"### lane {m['lane']}: {m['card']} ({m['date']}){done}", "",
             f"Peak bf16 matmul measured in this call: **{m['peak']['peak_tflops']:.0f} TFLOP/s** "
             f"({m['peak']['n']}^3, best of {m['peak']['repeats']}). N = {m['params']['n_params'] / 1e9:.3f} B "
             f"(all base parameters, tied embedding once; MFU = 6N x tok/s / peak; mfu_4n = 4/6 of it).",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + ".",
             "Data: " + "; ".join(f"{s}: {d['rows']} rows, {d['min_tokens']}-{d['max_tokens']} tokens "
                                  f"(median {d['median_tokens']})" for s, d in m["data"].items())
             + f". Batch {m['args']['batch']}, accumulation 1, {m['args']['steps']} steps, timed after "
             f"{m['args']['warmup']}; gradient checkpointing {'on' if m['args']['gc'] else 'off'}.", "",
             "| variant | s/step | tok/s (real) | MFU | pad % | batching used | peak GiB | MG tok/s (MLflow) "
             "| loss final (bare: mean of all steps) | note |", "|" + "---|" * 10]
    for r in res["rows"]:
        used = "packed" if r.get("eff_packing") else "padding-free" if r.get("eff_padding_free") else \
            "padded" if "eff_padding_free" in r else "-"
        note = (r.get("error") or "")[:120].replace("|", "/")
        if r.get("timing_source") == "mlflow":
            note = ("MLflow figures; " + note).strip("; ")
        pad = r.get("pad_fraction")
        lines.append(f"| {r['variant']} | {_f(r.get('s_per_step'), '.3f')} | {_f(r.get('tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('mfu'), '.1%')} | {_f(None if pad is None else pad * 100, '.0f')} | {used} | "
                     f"{_f(r.get('peak_gpu_gb'), '.2f')} | {_f(r.get('mg_tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('loss_final', r.get('loss_mean')), '.3f')} | {note} |")
    lines += ["", "| comparison | a | b | ratio | |", "|---|---|---|---|---|"]
    lines += [f"| {x['kind']} | {x['a']} | {x['b']} | {x['ratio']:.3f} | {x['note']} |" for x in res.get("ratios", [])]
    return "\n".join(lines)


def markdown(results: list[dict]) -> str:
    head = ["## Bare vs `model-garden train` (bench/gpu/bench_parity.py)", ""]
    if any(r["meta"].get("cpu_smoke") for r in results):
        head += ["**CPU smoke run: plumbing only, these figures say nothing about GPU speed.**", ""]
    return "\n".join(head + ["\n\n".join(lane_markdown(r) for r in results)]) + "\n"


def load(path: Path) -> tuple[dict, Path]:
    folder = path if path.is_dir() else path.parent
    res = json.loads((folder / "results.json" if path.is_dir() else path).read_text())
    return res, folder


def fill_last_window(res: dict, exported: dict) -> None:
    """Rows from a bench run older than ``mg_tokens_per_s_last``: take it from the exported MLflow runs
    (the last ``tokens_per_second`` point of the run of the same name), then redo the ratios."""
    last = {}
    for exp in exported.get("experiments", []):
        for run in exp.get("runs", []):
            points = run.get("history", {}).get("tokens_per_second")
            if points:
                last[run["name"]] = sorted(points)[-1][1]
    changed = False
    for row in res["rows"]:
        if row.get("side") == "mg" and "mg_tokens_per_s_last" not in row and row["variant"] in last:
            row["mg_tokens_per_s_last"], changed = last[row["variant"]], True
    if changed:
        res["ratios"] = ratios(res["rows"])


def write_results(sources: list[Path], to: Path) -> Path:
    loaded = [load(s) for s in sources]
    for res, folder in loaded:
        if res["meta"].get("cpu_smoke") or res["meta"]["card"] == "cpu":
            raise SystemExit(f"{folder}: a CPU smoke result; bench/results/ holds GPU measurements only")
    to.mkdir(parents=True, exist_ok=True)
    for res, folder in loaded:
        lane = res["meta"]["lane"]
        runs_json = to / f"{lane}-mlflow_runs.json"
        logs = folder / "logs.tar.gz"
        if logs.is_file():
            with tarfile.open(logs) as tar:
                member = next((m for m in tar.getmembers() if m.name == "mlflow_runs.json"), None)
                if member is not None:
                    with tar.extractfile(member) as src, runs_json.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
        if runs_json.is_file():
            fill_last_window(res, json.loads(runs_json.read_text()))
        (to / f"{lane}.json").write_text(json.dumps(res, indent=1, default=str))
    summary = to / "summary.md"
    summary.write_text(markdown([r for r, _ in loaded]))
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", type=Path, help="folders with results.json (+ logs.tar.gz), or results.json")
    p.add_argument("--to", type=Path, required=True, help="e.g. bench/results/2026-11-28-parity")
    a = p.parse_args(argv)
    print(write_results(a.sources, a.to))


if __name__ == "__main__":
    main(sys.argv[1:])
