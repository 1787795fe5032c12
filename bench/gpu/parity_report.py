"""Ratios and the markdown report of bench_parity.py, and the results writer.

    # after the device calls, with each lane's files fetched (results.json + logs.tar.gz per folder):
    python bench/gpu/parity_report.py FILES/gpu0 FILES/gpu1 \
        --to bench/results/$(date +%F)-parity
    # -> <lane>.json (every row), <lane>-mlflow_runs.json (the MLflow runs as JSON), summary.md

CPU smoke results are refused (they prove plumbing, not speed): the writer checks ``meta.cpu_smoke``
and that the card is a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
import sys
import tarfile
from pathlib import Path


MIN_PAIRS = 2  # a ratio from one pair of runs is noise-sized on these launch-bound steps: none is printed


def _key(r: dict, *skip: str) -> tuple:
    fields = ("backend", "method", "shape", "batching", "toggle", "num_gpus", "side", "objective", "ref")
    return tuple(r.get(f) for f in fields if f not in skip)


def _ok(r: dict) -> bool:
    return not r.get("error") and bool(r.get("tokens_per_s"))


def by_variant(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """variant -> round -> its good row (a row without ``round`` is round 0)."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if _ok(r):
            out.setdefault(r["variant"], {})[int(r.get("round", 0))] = r
    return out


def spread(values: list[float]) -> dict:
    """median, min, max and (max - min) / median of one variant's tokens/s over its rounds."""
    mid = statistics.median(values)
    return {"n": len(values), "median": mid, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / mid if mid else None}


def ratios(rows: list[dict], field: str = "tokens_per_s") -> list[dict]:
    """Every comparison these rows allow, each between two variants and over the rounds both ran
    (one pair per round: the same round of the same ABBA block). ``ratio`` is the median of the
    per-pair ratios, ``lo``/``hi`` their range; with fewer than :data:`MIN_PAIRS` pairs there is no
    ratio (``ratio`` None), only the note saying so."""
    runs = by_variant(rows)
    first = {name: next(iter(rs.values())) for name, rs in runs.items()}
    out = []

    def add(kind, a, b, note="", value_field=field):
        ra, rb = runs[a["variant"]], runs[b["variant"]]
        per = [ra[k][value_field] / rb[k][value_field] for k in sorted(set(ra) & set(rb))
               if ra[k].get(value_field) and rb[k].get(value_field)]
        item = {"kind": kind, "a": a["variant"], "b": b["variant"], "pairs": len(per), "per_pair": per,
                "ratio": None, "lo": None, "hi": None, "note": note}
        if len(per) >= MIN_PAIRS:
            item.update(ratio=statistics.median(per), lo=min(per), hi=max(per))
        else:
            item["note"] = (f"{len(per)} pair(s): no ratio (needs {MIN_PAIRS}); " + note).strip("; ")
        out.append(item)

    good = list(first.values())
    for r in good:  # platform / bare, same data, batching, method (target >= 0.95)
        if r["side"] == "mg" and not r["toggle"] and r["num_gpus"] == 1:
            for b in good:
                if b["side"] == "bare" and _key(b, "side") == _key(r, "side"):
                    add("platform/bare tok/s", r, b, "target >= 0.95")
    for r in good:  # unsloth / hf, same side and everything else
        if r["backend"] == "unsloth" and not r["toggle"] and r["num_gpus"] == 1:
            for h in good:
                if h["backend"] == "hf" and _key(h, "backend") == _key(r, "backend"):
                    add("unsloth/hf tok/s", r, h)
    for r in good:  # batching mode / padded (to the longest row, or to a multiple of 64: the GPU default)
        if r["batching"] not in ("padded",) and not r["toggle"] and r["num_gpus"] == 1:
            for p in good:
                if p["batching"] in ("padded", "padded64") and p["batching"] != r["batching"] and \
                        _key(p, "batching") == _key(r, "batching"):
                    add(f"batching/{p['batching']} tok/s", r, p,
                        "target >= 2 (flattened rows vs padded64)" if p["batching"] == "padded64" and
                        r["batching"] in ("padding_free", "packed") else "")
    for r in good:  # variable-length rows / fixed-length rows, same backend and side (target >= 0.85)
        if r["shape"] == "var" and not r["toggle"] and r["num_gpus"] == 1:
            for f in good:
                if f["shape"] == "fixed" and f["batching"] == "padded" and not f["toggle"] and \
                        (f["side"], f["backend"], f["method"], f["num_gpus"]) == \
                        (r["side"], r["backend"], r["method"], r["num_gpus"]):
                    add("var/fixed rows tok/s", r, f, "target >= 0.85")
    for r in good:  # attribution: what the toggled cost takes away from full tracking
        if r["toggle"]:
            for f in good:
                if not f["toggle"] and _key(f, "toggle") == _key(r, "toggle"):
                    add("toggled/full tok/s", r, f, "> 1: switching it off is faster by this factor")
    for r in good:  # dpo: an explicit reference copy (ref_model=) against the implicit one (adapter off)
        if r.get("ref"):
            for i in good:
                if not i.get("ref") and _key(i, "ref") == _key(r, "ref"):
                    add("ref model/implicit tok/s", r, i)
                    add("ref model/implicit peak GiB", r, i, "GPU memory at the last step", value_field="peak_train_gb")
    for r in good:  # several GPUs, both from Model Garden's MLflow record (target >= 1.8)
        if r["num_gpus"] > 1:
            for s_ in good:
                if s_["num_gpus"] == 1 and _key(s_, "num_gpus") == _key(r, "num_gpus") and s_.get("mg_tokens_per_s"):
                    add(f"{r['num_gpus']} GPUs/1 tok/s (MLflow, median)", r, s_, "target >= 1.8",
                        value_field="mg_tokens_per_s")
                    add(f"{r['num_gpus']} GPUs/1 tok/s (MLflow, last window)", r, s_,
                        "target >= 1.8; the settled figure when early windows still warm up",
                        value_field="mg_tokens_per_s_last")
    return out


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def lane_markdown(res: dict) -> str:
    m = res["meta"]
    ver = m["versions"]
    done = "" if m.get("complete", True) else f" (INCOMPLETE: {len(res['rows'])} of {len(m.get('planned', []))} variants)"
    lines = [f"### lane {m['lane']}: {m['card']} ({m['date']}){done}", "",
             f"Peak bf16 matmul measured in this call: **{m['peak']['peak_tflops']:.0f} TFLOP/s** "
             f"({m['peak']['n']}^3, {m['peak'].get('statistic', 'best')} of {m['peak']['repeats']} bursts). N = {m['params']['n_params'] / 1e9:.3f} B "
             f"(all base parameters, tied embedding once; MFU = 6N x tok/s / peak; mfu_4n = 4/6 of it).",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + ".",
             "Data: " + "; ".join(f"{s}: {d['rows']} rows, {d['min_tokens']}-{d['max_tokens']} tokens "
                                  f"(median {d['median_tokens']})" for s, d in m["data"].items())
             + f". Batch {m['args']['batch']}, accumulation 1, {m['args']['steps']} steps, timed after "
             f"{m['args']['warmup']}; gradient checkpointing {'on' if m['args']['gc'] else 'off'}.", "",
             "| variant | round | s/step | tok/s (real) | MFU | pad % | batching used | peak GiB (training) "
             "| MG tok/s (MLflow) | loss final (bare: mean of all steps) | note |", "|" + "---|" * 11]
    for r in res["rows"]:
        used = "packed" if r.get("eff_packing") else "padding-free" if r.get("eff_padding_free") else \
            "padded" if "eff_padding_free" in r else "-"
        note = (r.get("error") or "")[:120].replace("|", "/")
        if r.get("timing_source") == "mlflow":
            note = ("MLflow figures; " + note).strip("; ")
        pad = r.get("pad_fraction")
        lines.append(f"| {r['variant']} | {r.get('round', 0)} | {_f(r.get('s_per_step'), '.3f')} | {_f(r.get('tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('mfu'), '.1%')} | {_f(None if pad is None else pad * 100, '.0f')} | {used} | "
                     f"{_f(r.get('peak_train_gb', r.get('peak_gpu_gb')), '.2f')} | {_f(r.get('mg_tokens_per_s'), ',.0f')} | "
                     f"{_f(r.get('loss_final', r.get('loss_mean')), '.3f')} | {note} |")
    lines += ["", "Per variant over its rounds (spread = (max - min) / median):", "",
              "| variant | runs | tok/s median | min | max | spread | MFU (median) |", "|---|---|---|---|---|---|---|"]
    for name, rounds in by_variant(res["rows"]).items():
        st = spread([r["tokens_per_s"] for r in rounds.values()])
        mfus = [r["mfu"] for r in rounds.values() if r.get("mfu")]
        lines.append(f"| {name} | {st['n']} | {st['median']:,.0f} | {st['min']:,.0f} | {st['max']:,.0f} | "
                     f"{_f(st['spread'], '.1%')} | {_f(statistics.median(mfus) if mfus else None, '.1%')} |")
    lines += ["", f"Ratios: the median over pairs of runs from the same round (at least {MIN_PAIRS} pairs, "
              "else none is given), with the range of the pairs.", "",
              "| comparison | a | b | pairs | ratio | range | |", "|---|---|---|---|---|---|---|"]
    for x in res.get("ratios", []):
        rng = "-" if x.get("lo") is None else f"{x['lo']:.3f}-{x['hi']:.3f}"
        lines.append(f"| {x['kind']} | {x['a']} | {x['b']} | {x.get('pairs', '-')} | {_f(x.get('ratio'), '.3f')} | "
                     f"{rng} | {x['note']} |")
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
            points = run.get("history", {}).get("train/tokens_per_second", run.get("history", {}).get("tokens_per_second"))
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
