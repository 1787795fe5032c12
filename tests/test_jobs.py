"""Jobs on Ray: a real local Ray instance with ONE training slot, real `model-garden submit` / `jobs`.

Three jobs submitted at once run one after the other (Ray's queue, proven by start/end times), each
ends with a FINISHED run and a registered version; a job cancelled while queued never starts; a
running job that is cancelled ends KILLED; a job whose process dies is FAILED on both sides;
`jobs watch` shows the live steps; bad data is refused at submit time with file:line, nothing queued.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import run_cli

STEPS = 6
FAST = ["--no-carbon", "--no-system-metrics", "--learning-rate", "3e-3", "--batch-size", "4"]


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory, tiny_model, sample_data):
    """An isolated MG_HOME with its own sqlite store and a local Ray (1 slot); shut down afterwards."""
    import psutil

    home = tmp_path_factory.mktemp("jobs-home")
    env = {"MG_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "RAY_ADDRESS": ""}
    started = run_cli(["jobs", "start", "--slots", "1"], env=env, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    # the ~20 s start is announced before the wait and timed after it
    assert re.search(r"starting a local Ray instance for jobs .*local Ray started in \d+ s", started.stderr, re.S), \
        started.stderr[-3000:]
    again = run_cli(["jobs", "start"], env=env, timeout=120)  # already running: no start, no line
    assert again.returncode == 0 and "starting a local Ray" not in again.stderr, again.stderr[-3000:]
    state = json.loads((home / "ray" / "cluster.json").read_text())
    assert len(state["temp_dir"]) <= 40 and state["slots"] == 1
    tree = [state["pid"]] + [p.pid for p in psutil.Process(state["pid"]).children(recursive=True)]
    try:
        yield {"env": env, "home": home, "state": state, "model": str(tiny_model), "data": str(sample_data)}
    finally:
        down = run_cli(["jobs", "shutdown"], env=env, timeout=300)
        assert down.returncode == 0, down.stderr[-3000:]
        gone, alive = psutil.wait_procs([p for p in map(_proc, tree) if p], timeout=30)
        strays = [p for p in psutil.process_iter(["cmdline"]) if state["temp_dir"] in " ".join(p.info["cmdline"] or [])]
        assert not alive and not strays, f"left behind: {alive} {strays}"
        assert not (home / "ray" / "cluster.json").exists()


def _proc(pid):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _submit(ray_env, *args, env=None) -> str:
    proc = run_cli(["submit", "--base-model", ray_env["model"], "--dataset", ray_env["data"], *FAST, *args],
                   env={**ray_env["env"], **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mg-[0-9a-f]{10}", job_id), proc.stdout
    return job_id


def _client(ray_env):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_env["state"]["dashboard_url"])


def _wait_terminal(ray_env, job_ids, timeout=420):
    client = _client(ray_env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        infos = {j: client.get_job_info(j) for j in job_ids}
        if all(i.status.is_terminal() for i in infos.values()):
            return infos
        time.sleep(0.5)
    raise AssertionError({j: str(i.status) for j, i in infos.items()})


def _runs(ray_env, job_id):
    import mlflow

    client = mlflow.tracking.MlflowClient(ray_env["env"]["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, filter_string=f"tags.`mg.job_id` = '{job_id}'") if exps else []


def _wait_steps(ray_env, job_id, n=3, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        client, runs = _runs(ray_env, job_id)
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= n:
            return client, runs[0]
        time.sleep(0.5)
    raise AssertionError(f"{job_id}: fewer than {n} logged steps in {timeout} s")


def test_three_jobs_queue_on_one_slot_and_a_cancelled_queued_job_never_starts(ray_env):
    secret = "pw-never-in-argv-7f3"
    ids = [_submit(ray_env, "--max-steps", str(STEPS), "--register-as", "queued-lora", "--run-name", f"q{i}",
                   env={"MLFLOW_TRACKING_PASSWORD": secret}) for i in range(3)]
    queued = _submit(ray_env, "--max-steps", str(STEPS), "--register-as", "none", "--run-name", "cancelled")
    cancel = run_cli(["jobs", "cancel", queued], env=ray_env["env"])
    assert cancel.returncode == 0 and "before it starts" in cancel.stdout, cancel.stdout + cancel.stderr

    watch = run_cli(["jobs", "watch", ids[0], "--interval", "1"], env=ray_env["env"], timeout=600)
    assert watch.returncode == 0, watch.stderr[-2000:]
    steps = [int(s) for s in re.findall(r"^\s+step (\d+)\s+loss [0-9.]+", watch.stdout, re.M)]
    assert steps == list(range(1, STEPS + 1)), watch.stdout
    assert "SUCCEEDED (run FINISHED), registered models:/queued-lora/" in watch.stdout

    infos = _wait_terminal(ray_env, [*ids, queued])
    assert [str(infos[j].status.value) for j in ids] == ["SUCCEEDED"] * 3
    # submitted within seconds of each other, but with one slot the three trainings ran one after the
    # other: each run started after the previous run ended, and after Ray's previous job ended
    submitted = sorted(infos[j].start_time for j in ids)
    assert submitted[-1] - submitted[0] < min(i.end_time - i.start_time for i in infos.values())
    versions, spans = set(), []
    for j in ids:
        client, runs = _runs(ray_env, j)
        spans.append((runs[0].info.start_time, runs[0].info.end_time, infos[j].end_time))
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["mg.registered_model"] == "queued-lora"
        versions.add(runs[0].data.tags["mg.registered_version"])
        assert len(client.get_metric_history(runs[0].info.run_id, "train/loss")) == STEPS
        info = infos[j]
        assert secret not in info.entrypoint and secret not in json.dumps(info.metadata)
        assert info.runtime_env["env_vars"]["MLFLOW_TRACKING_PASSWORD"] == secret  # runtime env only
        assert info.metadata["mg.command"] == "train" and info.metadata["mg.resources"] == '{"mg_train_slot": 1}'
        assert secret not in _client(ray_env).get_job_logs(j)
    assert versions == {"1", "2", "3"}
    spans.sort()
    for (_, run_end, job_end), (run_start, _, _) in zip(spans, spans[1:]):
        assert run_start >= run_end and run_start >= job_end - 1000, spans  # Ray's times: ms, 1 s slack

    # the cancelled queued job: STOPPED by Ray, and its command never ran (no run, no output)
    assert infos[queued].status.value == "STOPPED"
    assert _runs(ray_env, queued)[1] == []
    # Ray starts a stopped queued job's entry process and signals it at once: the entry may get as far
    # as announcing the command, but no training step and no run may follow
    logs = _client(ray_env).get_job_logs(queued)
    assert not re.search(r"step \d+|loss|Traceback", logs), logs

    listed = run_cli(["jobs", "list", "--json"], env=ray_env["env"])
    rows = {r["job_id"]: r for r in json.loads(listed.stdout)}
    assert {rows[j]["run_status"] for j in ids} == {"FINISHED"} and rows[queued]["run_id"] is None
    assert all(rows[j]["loss"] > 0 and rows[j]["tokens_per_second"] > 0 for j in ids)
    assert sorted(rows[j]["registered"] for j in ids) == [f"models:/queued-lora/{v}" for v in (1, 2, 3)]


def test_cancelled_running_job_ends_killed_and_a_dead_process_fails_both_sides(ray_env):
    import psutil

    job = _submit(ray_env, "--max-steps", "100000", "--register-as", "none", "--run-name", "to-cancel")
    _wait_steps(ray_env, job)
    cancel = run_cli(["jobs", "cancel", job], env=ray_env["env"])
    assert cancel.returncode == 0, cancel.stderr[-2000:]
    assert re.search(r"Ray state\s+│\s+STOPPED", cancel.stdout) and re.search(r"run status\s+│\s+KILLED", cancel.stdout)
    client, runs = _runs(ray_env, job)
    assert runs[0].info.status == "KILLED" and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3

    doomed = _submit(ray_env, "--max-steps", "100000", "--register-as", "none", "--run-name", "dies")
    _wait_steps(ray_env, doomed)
    children = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "mg_mlflow.team.entry" in cmd and "--child" in cmd:
            try:
                if p.environ().get("MG_JOB_ID") == doomed:
                    children.append(p)
            except psutil.Error:
                pass
    assert len(children) == 1
    os.kill(children[0].pid, signal.SIGKILL)  # e.g. the out-of-memory killer
    info = _wait_terminal(ray_env, [doomed])[doomed]
    assert info.status.value == "FAILED"
    client, runs = _runs(ray_env, doomed)
    assert runs[0].info.status == "FAILED" and "SIGKILL" in runs[0].data.tags["mg.error"]


def test_bad_data_and_bad_options_are_refused_before_queueing(ray_env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = Path(ray_env["data"]).read_text().splitlines()[:4]
    lines.insert(2, '{"instruction": "no output here"}')
    bad.write_text("\n".join(lines) + "\n")
    before = len(_client(ray_env).list_jobs())
    proc = run_cli(["submit", "--base-model", ray_env["model"], "--dataset", str(bad), "--max-steps", "5"],
                   env=ray_env["env"])
    assert proc.returncode == 2 and f"{bad}:3" in proc.stderr and proc.stdout == "", proc.stderr
    typo = run_cli(["submit", "--base-model", ray_env["model"], "--dataset", ray_env["data"], "--set", "lora_rr=4"],
                   env=ray_env["env"])
    assert typo.returncode == 2 and "did you mean lora_r" in typo.stderr
    generic = run_cli(["submit-command", "--", "runs", "list", "--no-such-option"], env=ray_env["env"])
    assert generic.returncode == 2 and "no-such-option" in generic.stderr
    images = tmp_path / "vision.jsonl"
    images.write_text('{"text": "What colour?", "image": "gone.png", "response": "red"}\n')
    vision = run_cli(["submit-vision", "--base-model", ray_env["model"], "--dataset", str(images)], env=ray_env["env"])
    assert vision.returncode == 2 and f"{images}:1" in vision.stderr and "gone.png" in vision.stderr, vision.stderr
    # a cluster (--address) cannot reach this machine's sqlite store: refused, not queued
    remote = run_cli(["submit", "--address", ray_env["state"]["dashboard_url"], "--base-model", ray_env["model"],
                      "--dataset", ray_env["data"]], env=ray_env["env"])
    assert remote.returncode == 2 and "model-garden server" in remote.stderr
    assert len(_client(ray_env).list_jobs()) == before


def test_any_model_garden_command_runs_as_a_job(ray_env, tmp_path):
    out = tmp_path / "from-job.jsonl"
    proc = run_cli(["submit-command", "--", "data", "sample", str(out), "-n", "5"], env=ray_env["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    job_id = proc.stdout.strip().splitlines()[-1]
    info = _wait_terminal(ray_env, [job_id])[job_id]
    assert info.status.value == "SUCCEEDED" and info.metadata["mg.command"] == "data"
    assert len(out.read_text().splitlines()) == 5
    logs = run_cli(["jobs", "logs", job_id], env=ray_env["env"])
    assert logs.returncode == 0 and f"[model-garden job {job_id}] model-garden data sample" in logs.stdout


def test_a_run_left_open_by_a_job_ray_ended_is_closed_on_read(mg_home):
    import mlflow

    from mg_mlflow.team.jobs import reconcile

    client = mlflow.tracking.MlflowClient()
    exp = client.create_experiment("orphans", artifact_location=(mg_home / "a").as_uri())
    runs = [client.create_run(exp, tags={"mg.job_id": f"mg-{i}"}) for i in range(3)]
    fixed = [reconcile("mg-x", state, [run])[0] for state, run in zip(("STOPPED", "FAILED", "RUNNING"), runs)]
    assert [r.info.status for r in fixed] == ["KILLED", "FAILED", "RUNNING"]
    assert "ended STOPPED" in fixed[0].data.tags["mg.error"]
