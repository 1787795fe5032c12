"""``model-garden train --num-gpus N`` on CPU: 2 ranks under torchrun with the gloo backend
(``MG_DDP_CPU=1``), through the real console script and a real sqlite MLflow store.

Two ranks with batch 2 see exactly the rows one process with batch 4 sees, so the record of the
2-rank job must equal the single-process one step for step: the same losses and the same number of
trained tokens (tokens are summed over the ranks, not counted on rank 0 only).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time

import pytest
from conftest import BIN, invoke_cli, isolated_home, run_cli, train_tiny

STEPS = 6


@pytest.fixture(scope="module")
def ddp_home(tmp_path_factory):
    """One store for this module's jobs (each test uses its own experiment): a fresh sqlite store
    costs its schema migrations in every process that opens it."""
    with isolated_home(tmp_path_factory.mktemp("ddp-home")) as home:
        yield home


def _client():
    import mlflow

    return mlflow.tracking.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def _runs(experiment: str):
    client = _client()
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_two_ranks_make_one_run_and_one_version(ddp_home, tiny_model, sample_data):
    proc = run_cli(["train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
                    "--max-steps", str(STEPS), "--batch-size", "2", "--learning-rate", "3e-3",
                    "--num-gpus", "2", "--register-as", "ddp-tiny", "--experiment", "ddp", "--no-progress",
                    # the GPU default: losses and tokens read (all_reduced over the ranks) every 4 steps
                    "--set", "metrics_sync_steps=4"],
                   env={"MG_DDP_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    client = _client()
    (run,) = _runs("ddp")  # rank 1 opened no run of its own
    params, metrics = run.data.params, run.data.metrics
    assert (run.info.status, params["num_gpus"], params["world_size"]) == ("FINISHED", "2", "2")
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))  # one point per step: nothing logged twice
    assert all(math.isfinite(v) for _, v in losses)
    (version,) = client.search_model_versions("name='ddp-tiny'")
    assert version.tags["mg.run_id"] == run.info.run_id
    # the save path reloaded the logged model and compared its logits before registering
    assert metrics["verify_max_logit_diff"] <= 1e-3
    assert metrics["system/carbon/total_energy_j"] > 0  # one tracker, on rank 0
    # rank 0 logged the record: resolved config, carbon report, loss curve
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config", "carbon", "plots"}

    one = train_tiny(tiny_model, sample_data, max_steps=STEPS, batch_size=4, learning_rate=3e-3,
                     register_as="none", experiment="ddp-baseline")
    single = sorted((m.step, m.value) for m in client.get_metric_history(one.run_id, "train/loss"))
    assert [s for s, _ in single] == [s for s, _ in losses]
    for (_, a), (_, b) in zip(losses, single):
        assert a == pytest.approx(b, rel=2e-3)  # same rows, same global batch: the same loss curve
    assert metrics["trained_tokens"] == one.metrics["trained_tokens"] > 0


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory):
    from mg_mlflow.data.sample import write_preference_sample, write_prompt_sample

    folder = tmp_path_factory.mktemp("rl-data")
    return {"pairs": write_preference_sample(folder / "pairs.jsonl", 64, "pairs"),
            "prompts": write_prompt_sample(folder / "prompts.jsonl", 64)}


def _history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _client().get_metric_history(run_id, key))


DPO_STEPS = 4
DPO_RECORD = tuple("train/" + k for k in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                         "rewards/accuracies", "logps/chosen", "logps/rejected"))


@pytest.mark.slow
def test_dpo_on_two_ranks_is_one_process_with_twice_the_batch(ddp_home, tiny_model, rl_data):
    """DPO on 2 ranks x 2 pairs = one process with 4 pairs, step for step. The implicit reference (LoRA:
    the adapter switched off) is computed on each rank for its own pairs, and TRL gathers every pair
    metric over the ranks before it is logged, so the same rows give the same record; each rank pads to
    its own longest row, which the masks remove (float rounding is all that differs). Trained tokens are
    chosen + rejected rows of both ranks."""
    proc = run_cli(["train", "--objective", "dpo", "--base-model", str(tiny_model), "--dataset", str(rl_data["pairs"]),
                    "--max-steps", str(DPO_STEPS), "--batch-size", "2", "--learning-rate", "3e-3", "--num-gpus", "2",
                    "--register-as", "ddp-dpo", "--experiment", "ddp-dpo", "--no-progress", "--no-carbon",
                    "--no-system-metrics"], env={"MG_DDP_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = _runs("ddp-dpo")  # one run: rank 1 opened none
    assert (run.data.params["world_size"], run.data.params["objective"]) == ("2", "dpo")
    (version,) = _client().search_model_versions("name='ddp-dpo'")
    assert version.tags["mg.run_id"] == run.info.run_id and version.tags["mg.objective"] == "dpo"
    assert run.data.metrics["verify_max_logit_diff"] <= 1e-3

    one = train_tiny(tiny_model, rl_data["pairs"], objective="dpo", max_steps=DPO_STEPS, batch_size=4,
                     register_as="none", experiment="ddp-dpo-one")
    for key in DPO_RECORD:
        two, single = _history(run.info.run_id, key), _history(one.run_id, key)
        assert [s for s, _ in two] == [s for s, _ in single] == list(range(1, DPO_STEPS + 1)), key  # logged once
        assert [v for _, v in two] == pytest.approx([v for _, v in single], rel=1e-4, abs=1e-5), key
    assert _history(run.info.run_id, "train/rewards/margins")[-1][1] > 0  # trained: chosen pulled above rejected
    assert run.data.metrics["trained_tokens"] == one.metrics["trained_tokens"] > 0
    assert run.data.tags["mg.reference"] == _client().get_run(one.run_id).data.tags["mg.reference"] == \
        "the base model (the adapter switched off)"


GRPO_STEPS = 3


@pytest.mark.slow
def test_grpo_on_two_ranks_samples_on_each_and_logs_the_rewards_of_both(ddp_home, tiny_model, rl_data):
    """GRPO on 2 ranks, one group of 4 completions per step spread over them (2 each): every rank samples
    its share with model.generate (seeded per rank: 4 different completions), TRL gathers the rewards over
    the ranks before the advantages and the log, and rank 0 logs them once. The per-step reads are the
    GPU path's (metrics_sync_steps > 1), whose token count is GRPO's own."""
    proc = run_cli(["train", "--objective", "grpo", "--base-model", str(tiny_model), "--dataset",
                    str(rl_data["prompts"]), "--reward", "length", "--reward-length-target", "16",
                    "--num-generations", "4", "--max-completion-length", "8", "--beta", "0", "--batch-size", "2",
                    "--num-gpus", "2", "--max-steps", str(GRPO_STEPS), "--sample-steps", "1", "--learning-rate",
                    "1e-2", "--register-as", "ddp-grpo", "--experiment", "ddp-grpo", "--no-progress", "--no-carbon",
                    "--no-system-metrics", "--set", "metrics_sync_steps=2"],
                   env={"MG_DDP_CPU": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = _client()
    (run,) = _runs("ddp-grpo")
    params = run.data.params
    assert (params["world_size"], params["num_gpus"], params["generation_resolved"]) == ("2", "2", "generate")
    (version,) = client.search_model_versions("name='ddp-grpo'")
    assert version.tags["mg.run_id"] == run.info.run_id and run.data.metrics["verify_max_logit_diff"] <= 1e-3
    for key in ("train/reward", "train/rewards/length/mean", "train/completions/mean_length", "train/loss"):
        steps = [s for s, _ in _history(run.info.run_id, key)]
        assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == GRPO_STEPS, key  # once per point
    table = json.loads(open(client.download_artifacts(run.info.run_id, "samples/step_00001.json")).read())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert len(rows) == 4 and len({r["prompt"] for r in rows}) == 1  # one group, gathered from both ranks
    assert len({r["completion"] for r in rows}) == 4  # each rank sampled its own two
    logged = dict(_history(run.info.run_id, "train/rewards/length/mean"))[1]
    assert logged == pytest.approx(sum(r["length"] for r in rows) / 4, abs=1e-6)  # the mean over both ranks
    assert run.data.metrics["trained_tokens"] > 0 and run.data.metrics["train/tokens_per_second"] > 0


def test_grpo_groups_that_split_over_the_ranks_are_refused_before_any_run(mg_home, tiny_model, rl_data):
    base = ["train", "--objective", "grpo", "--base-model", str(tiny_model), "--dataset", str(rl_data["prompts"]),
            "--reward", "length", "--num-generations", "4", "--experiment", "ddp-groups", "--no-carbon"]
    cases = [
        (["--num-gpus", "2", "--batch-size", "1"],
         ["batch_size x num_gpus x grad_accum = 1 x 2 x 1 = 2 completions", "multiple of num_generations=4",
          "set --num-generations to 2", "--batch-size 2"]),
        (["--num-gpus", "2", "--batch-size", "1", "--grad-accum", "2", "--eval-split", "0.25"],
         ["the eval batch, batch_size x num_gpus = 1 x 2 = 2 completions", "set --batch-size 2"]),
        (["--batch-size", "2", "--grad-accum", "2", "--eval-split", "0.25"],  # one device: TRL would fail in the run
         ["the eval batch, batch_size x num_gpus = 2 x 1 = 2 completions", "set --batch-size 4"]),
    ]
    for extra, expected in cases:
        proc = invoke_cli([*base, *extra], env={"MG_DDP_CPU": "1"})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        for text in expected:
            assert text in proc.stderr, (text, proc.stderr)
    assert _runs("ddp-groups") == []
    # a group spread over the ranks is fine: 2 per rank x 2 ranks = one group of 4
    from mg_mlflow.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d", "objective": "grpo",
                                               "reward": ["length"], "batch_size": 2, "num_gpus": 2})
    assert (cfg.batch_size, cfg.num_gpus, cfg.num_generations) == (2, 2, 4)


def test_more_gpus_than_the_machine_has_is_a_clear_error(mg_home, tiny_model, sample_data, monkeypatch):
    import torch
    from click.testing import CliRunner

    from mg_mlflow.cli import cli

    if torch.cuda.device_count() >= 4:
        pytest.skip("this machine has 4 GPUs")
    monkeypatch.delenv("MG_DDP_CPU", raising=False)
    result = CliRunner().invoke(cli, ["train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
                                      "--num-gpus", "4", "--experiment", "ddp-none"])
    assert result.exit_code == 2, result.output
    assert "--num-gpus 4" in result.output and "MG_DDP_CPU=1" in result.output
    assert _runs("ddp-none") == []  # checked before anything started
    result = CliRunner().invoke(cli, ["train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
                                      "--num-gpus", "0"])
    assert result.exit_code == 2 and "num_gpus must be >= 1, got 0" in result.output


def _rank_process(launcher_pid: int, rank: int):
    import psutil

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "torch.distributed.run" not in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


@pytest.mark.parametrize("how", ["rank_dies", "ctrl_c"])
def test_a_dead_rank_fails_the_run_and_ctrl_c_kills_it(ddp_home, tiny_model, sample_data, how):
    """A rank killed mid-training (SIGKILL, as the OOM killer does): non-zero exit, the run FAILED,
    nothing registered. Ctrl-C (SIGINT to the whole process group): the run ends KILLED."""
    cmd = [str(BIN / "model-garden"), "train", "--base-model", str(tiny_model), "--dataset", str(sample_data),
           "--max-steps", "400", "--batch-size", "2", "--num-gpus", "2", "--register-as", "ddp-broken",
           "--experiment", f"ddp-{how}", "--no-progress", "--no-carbon", "--no-system-metrics"]
    proc = subprocess.Popen(cmd, env={**os.environ, "MG_DDP_CPU": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if line.startswith("step 2/"):  # training under way on both ranks
                break
        if how == "rank_dies":
            _rank_process(proc.pid, 1).kill()
        else:
            os.killpg(proc.pid, signal.SIGINT)
        tail = proc.stdout.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0, tail[-3000:]
    (run,) = _runs(f"ddp-{how}")
    assert run.info.status == ("FAILED" if how == "rank_dies" else "KILLED"), tail[-3000:]
    assert run.data.tags.get("mg.error")
    steps = [m.step for m in _client().get_metric_history(run.info.run_id, "train/loss")]
    assert 2 <= len(steps) < 400 and len(steps) == len(set(steps))
    assert _client().search_model_versions("name='ddp-broken'") == []
    assert _left_in_session(proc.pid) == []  # no rank (nor torchrun) outlives the launcher


def _left_in_session(sid: int, wait_s: float = 30.0) -> list[int]:
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid:
                    left.append(p.pid)
            except (OSError, psutil.Error):
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def test_num_gpus_is_an_mlproject_parameter_and_a_validated_field():
    from mg_mlflow.cli.base import mlflow_params_to_set
    from mg_mlflow.config import TrainConfig, build_config

    # `mlflow run . -e train -P num_gpus=2` reaches the entry point as `--num_gpus 2`
    assert mlflow_params_to_set(["--no-progress", "--num_gpus", "2"], TrainConfig) == [
        "--no-progress", "--set", "num_gpus=2"]
    cfg = build_config(TrainConfig, overrides={"base_model": "m", "dataset": "d"}, set_args=["num_gpus=2.0"])
    assert cfg.num_gpus == 2


def test_carbon_measures_exactly_the_gpus_of_the_job(monkeypatch, tmp_path):
    from mg_mlflow.tracking import boamps
    from mg_mlflow.training import distributed

    monkeypatch.delenv("MG_DDP_CPU", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for key, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.job_gpu_ids() == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert distributed.job_gpu_ids() == [4, 6]  # codecarbon reads physical NVML indices
    monkeypatch.setenv("MG_DDP_CPU", "1")
    assert distributed.job_gpu_ids() is None
    tracker = boamps.make_tracker(tmp_path, boamps.recording_output(), gpu_ids=[4, 6])
    assert tracker._conf["gpu_ids"] == [4, 6]


def test_the_in_process_path_refuses_num_gpus_it_cannot_honour(mg_home, tiny_model, sample_data):
    """A sweep trial or a script calling the training path in one process must not train on one
    device while the run says num_gpus=2."""
    from mg_mlflow.errors import MGError

    with pytest.raises(MGError, match="num_gpus=2 needs one process per GPU"):
        train_tiny(tiny_model, sample_data, num_gpus=2, experiment="ddp-inprocess")
    assert _runs("ddp-inprocess") == []


def _stop_flag_rank(rank: int, port: int, out) -> None:
    """One of 2 ranks: join the job's process group the way a training rank does, then agree on a flag
    that only rank 1 raises."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MG_DDP_CPU="1")
    import torch.distributed as dist

    from mg_mlflow.training import distributed

    distributed.start_process_group()
    group = distributed._HOST_GROUP
    out.put((rank, group is not None and group is not dist.group.WORLD, dist.get_backend(group),
             distributed.any_rank(rank == 1), distributed.any_rank(False)))
    dist.destroy_process_group()


def test_ranks_agree_on_a_stop_over_their_own_host_side_group():
    """The per-step stop flag goes over a second, gloo group (on GPUs the default group is NCCL, whose
    all_reduce + .item() would make every step wait for the device)."""
    import multiprocessing as mp

    from services_support import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_stop_flag_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = sorted(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert got == [(0, True, "gloo", True, False), (1, True, "gloo", True, False)]
