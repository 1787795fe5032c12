"""bench/host_overhead.py's reading of py-spy's raw samples: which main-thread samples of the training
loop were in callbacks, and which other threads were working rather than waiting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "host_overhead", Path(__file__).resolve().parents[1] / "bench" / "host_overhead.py")
host_overhead = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(host_overhead)

LOOP = "thread (7): MainThread;<module> (x:1);_inner_training_loop (transformers/trainer.py:1)"
RAW = "\n".join([
    f"{LOOP};training_step (trl/sft.py:1) 90",
    f"{LOOP};CallbackHandler.call_event (transformers/trainer_callback.py:1);_record (mg.py:1) 10",
    "thread (7);<module> (x:1);import (y:1) 50",  # the main thread before py-spy named it, outside the loop
    "thread (9): mg-metric-spool;_send_loop (spool.py:1);do_commit (sqlalchemy:1) 7",
    "thread (9): mg-metric-spool;_send_loop (spool.py:1);Condition.wait (threading.py:327) 40",
    "thread (11): mg-carbon;_work (carbon.py:1);select (selectors.py:1) 30",
])


def test_callback_share_and_busy_threads(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW + "\n")
    res = host_overhead.analyse(raw)
    assert (res["loop_samples"], res["callback_samples"]) == (100, 10)
    assert res["callback_share"] == 0.1
    assert res["busy_samples_by_thread"] == {"mg-metric-spool": 7}  # waiting samples are not work


def test_with_subprocesses_the_process_frame_is_skipped(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("\n".join(f'process 7:"model-garden train";{line}' for line in RAW.splitlines()) + "\n")
    assert host_overhead.analyse(raw)["callback_samples"] == 10
