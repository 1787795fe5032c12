"""A full disk while writing a checkpoint: the run ends FAILED with "disk full", the folder and its free
space; the partial checkpoint never looks complete, and `--resume` continues from the newest complete
one (also past an incomplete newer folder, as a crash without the staging rename leaves). The disk is a
real size-limited tmpfs (root only; skipped elsewhere)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from reltrain_support import client, run_cli, runs

pytestmark = pytest.mark.slow
CHECKPOINT_KB = 924  # one checkpoint of the tiny model's LoRA run (adapter, optimizer, RNG, state)


@pytest.fixture()
def small_disk(tmp_path):
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    folder = tmp_path / "disk"
    folder.mkdir()
    size = f"{CHECKPOINT_KB * 4 + 300}k"  # four checkpoints fit, the fifth does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_disk_full_at_a_checkpoint_then_resume_from_the_newest_complete_one(mg_home, tiny_model, sample_data,
                                                                              small_disk, tmp_path):
    out = small_disk / "run"
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data), "--max-steps", "8",
                    "--save-steps", "1", "--no-system-metrics", "--no-carbon", "--output-dir", str(out),
                    "--register-as", "ckpt-full"], cwd=tmp_path)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"disk full (No space left on device) while writing checkpoint-5 under {out / 'checkpoints'}: " in said
    assert " MiB free; the partial checkpoint was removed, checkpoint-4 is the newest complete one" in said
    assert "--resume" in said and "Traceback" not in proc.stderr
    folder = out / "checkpoints"
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-")) == [
        f"checkpoint-{i}" for i in range(1, 5)]
    assert not list((folder / ".partial").glob("checkpoint-*"))  # nothing half-written is left
    (run,) = runs()
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["mg.error"]
    import mlflow

    assert "ckpt-full" not in [m.name for m in mlflow.tracking.MlflowClient().search_registered_models()]

    # an incomplete newer checkpoint, as a crash without the staging rename leaves one: no trainer_state.json
    (folder / "checkpoint-5").mkdir()
    shutil.copy(folder / "checkpoint-4" / "adapter_model.safetensors", folder / "checkpoint-5")
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    resumed = run_cli(["train", "--resume", run.info.run_id], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = client().get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.data.metrics["train_steps"] == 8
    state = json.loads((folder / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["global_step"] == 5  # rewritten by the resumed run, which started from checkpoint-4
    steps = [m.step for m in client().get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, 9)) and len(steps) == len(set(steps))  # each step once
