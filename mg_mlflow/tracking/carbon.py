"""Carbon and energy tracking (codecarbon) as MLflow metrics at the trainer's global step.

Contract used by the training recipe:
- ``training_callback(cfg, output_dir)`` returns a transformers ``TrainerCallback`` (or None when
  carbon is off) that logs ``system/carbon/*`` metrics at the trainer's global step;
- the callback's ``totals()`` returns final figures, logged as metrics and as version tags.

How it works: an ``OfflineEmissionsTracker`` (no network) samples power every
``carbon_measure_secs`` in its own thread. Every ``carbon_interval_steps`` optimizer steps the
callback (at most once per power sample) hands the step to a worker thread, which flushes the tracker; codecarbon passes the full
cumulative ``EmissionsData`` to :class:`RecordingOutput` (a public ``BaseOutput`` handler), and the
worker logs cumulative emissions/energy, the interval's power per component and the emissions rate
at that step. The training loop itself only compares two numbers, so the tracker stays well under
1% of a step (``bench/bench_carbon_overhead.py``). codecarbon also writes its raw CSV, which
becomes the run artifact ``carbon/emissions.csv`` next to a BoAmps-style report.

Phases (GRPO): ``with callback.phase("generation"):`` around a part of the training window reads the same
tracker's cumulative energy at its start and end (codecarbon accrues energy only when it measures, so each
reading makes it measure, ~0.2 ms on CPU). ``totals()`` then adds ``system/carbon/<phase>/*`` for that phase
and for the rest of the window (``optimisation``), which add up to the run's totals, and the generation share
of time and energy. codecarbon's task API (``start_task``) is not used: it restarts the tracker's clock, so the
run's total duration would only cover the time since the last task began.

Fail soft: any failure of codecarbon (start, flush, stop) is reported once as a ``RuntimeWarning``
and the ``mg.carbon.status`` tag; training goes on and the metrics logged so far stay.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from mg_mlflow import metric_names as mn
from mg_mlflow.tracking import boamps

CSV_NAME = boamps.CSV_NAME
PHASES_NOTE = ("generation: the run's tracker read at the start and end of every generation call (same sources "
               "as the totals); optimisation: the rest of the tracked window")


class CarbonCallback(TrainerCallback):
    """Log codecarbon figures to the active MLflow run every ``interval_steps`` steps (or seconds).

    A step-based point waits until ``min_gap_secs`` (default: the power sampling interval) has passed
    since the previous one, so fast steps do not pay for points that carry no new measurement.
    """

    def __init__(self, output_dir: str | Path, country: str = "USA", region: str = "", pue: float = 1.0,
                 interval_steps: int = 10, interval_secs: float = 0.0, measure_secs: float = 5.0,
                 offline: bool = True, project_name: str = "model-garden", min_gap_secs: float | None = None,
                 gpu_ids: list | None = None):
        self.output_dir = Path(output_dir) / "carbon"
        self.country, self.region, self.pue, self.offline = country, region, pue, offline
        self.interval_steps, self.interval_secs = max(1, int(interval_steps)), float(interval_secs)
        self.measure_secs, self.project_name = float(measure_secs), project_name
        self.min_gap_secs = self.measure_secs if min_gap_secs is None else float(min_gap_secs)
        self.gpu_ids = gpu_ids  # several GPUs: every GPU of the job, summed (None: codecarbon's default)
        self.tracker: Any = None
        self.handler: Any = None
        self.run_id: str | None = None
        self.error: str | None = None
        self.sources: dict[str, str] = {}
        self.points: list[tuple[int, dict[str, float]]] = []  # what was logged, step by step
        self.final: dict | None = None
        self.tokens = 0.0
        self._queue: queue.Queue = queue.Queue()
        self.offsets: dict[str, float] = {}  # a resumed run: cumulative figures of the earlier segment
        self.logged_through = -1  # ... and the last step it logged (recomputed steps log no point)
        self._worker: threading.Thread | None = None
        self._last_queued = 0.0
        self._intervals = boamps.Intervals()
        self._previous_tokens = 0.0
        self._lock = threading.Lock()  # one codecarbon measurement at a time from this side (worker, phases)
        self.phases: dict[str, dict[str, float]] = {}  # phase -> seconds and kWh (energy, cpu, gpu, ram)
        self.phase_error: str | None = None

    # ------------------------------------------------------------------ building blocks (overridable)
    def make_tracker(self):
        """The codecarbon tracker; subclasses may return another one (tests inject failures here)."""
        return boamps.make_tracker(self.output_dir, self.handler, country=self.country, region=self.region,
                                   pue=self.pue, measure_secs=self.measure_secs, offline=self.offline,
                                   project_name=self.project_name, gpu_ids=self.gpu_ids)

    def _fail(self, what: str, exc: BaseException | str) -> None:
        """Say why once, stop the tracker quietly, keep training."""
        if self.error is not None:
            return
        self.error = f"{what}: {exc}"
        warnings.warn(f"carbon tracking stopped ({self.error}); training goes on without it",
                      RuntimeWarning, stacklevel=2)
        self._tag({"mg.carbon.status": f"failed: {self.error}"[:4000]})
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            try:
                tracker.stop()
            except Exception:  # noqa: BLE001 - already failing; nothing more to say
                pass

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient()

    def _tag(self, tags: dict[str, str]) -> None:
        if self.run_id is None:
            return
        try:
            from mlflow.entities import RunTag

            self._client().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        except Exception:  # noqa: BLE001 - tags are a nicety
            pass

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.logged_through:
            return
        metrics = {k: v + self.offsets.get(k, 0.0) for k, v in metrics.items()}
        self.points.append((step, metrics))
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client().log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def _new_record(self, before: int, what: str) -> dict:
        with self.handler.lock:
            records = list(self.handler.records)
        if len(records) <= before:
            raise RuntimeError(f"codecarbon {what} produced no data (see codecarbon's log)")
        return records[-1]

    def _measure(self, step: int, tokens: float, final: bool = False) -> None:
        before = len(self.handler.records)
        with self._lock:
            if final:
                self.tracker.stop()
            else:
                self.tracker.flush()
        record = self._new_record(before, "stop" if final else "flush")
        metrics = self._intervals.metrics(record)  # per-token figure: in totals()
        self._previous_tokens = tokens
        if final:
            self.final = record
        self._log(metrics, step)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.tracker is None:
                continue
            try:
                self._measure(*item)
            except Exception as exc:  # noqa: BLE001 - fail soft
                self._fail("codecarbon flush failed", exc)

    # ------------------------------------------------------------------ phases
    def _reading(self) -> dict[str, float] | None:
        """The tracker's cumulative kWh now (it measures first); None when there is no tracker to read."""
        tracker = self.tracker
        if tracker is None or self.phase_error is not None:
            return None
        try:
            with self._lock:
                tracker._measure_power_and_energy()  # codecarbon 3.x: accrue the energy up to now
                return {"energy": tracker._total_energy.kWh, "cpu": tracker._total_cpu_energy.kWh,
                        "gpu": tracker._total_gpu_energy.kWh, "ram": tracker._total_ram_energy.kWh}
        except Exception as exc:  # noqa: BLE001 - the totals go on without the split
            self.phase_error = f"codecarbon could not be read at a phase boundary: {exc}"
            warnings.warn(f"carbon: {self.phase_error}; the run logs its totals without the phase split",
                          RuntimeWarning, stacklevel=3)
            return None

    @contextlib.contextmanager
    def phase(self, name: str):
        """Add the time and energy of the block to phase ``name`` (``system/carbon/<name>/*`` in the totals)."""
        start = self._reading()
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            end = self._reading() if start is not None else None
            if end is not None:
                acc = self.phases.setdefault(name, {"seconds": 0.0, **{k: 0.0 for k in end}})
                acc["seconds"] += seconds
                for key, value in end.items():
                    acc[key] += value - start[key]

    def phase_totals(self, record: dict) -> dict[str, float]:
        """Each measured phase and the rest of the window (optimisation) as metrics, from the final ``record``."""
        if not self.phases or self.phase_error is not None:
            return {}
        energy, seconds = float(record["energy_consumed"]), float(record["duration"])
        mg_per_kwh = float(record["emissions"]) * mn.MG_PER_KG / energy if energy > 0 else 0.0
        parts = {name: (acc["energy"], acc["seconds"]) for name, acc in self.phases.items()}
        parts[mn.OPTIMISATION] = (max(0.0, energy - sum(e for e, _ in parts.values())),
                                  max(0.0, seconds - sum(s for _, s in parts.values())))
        out: dict[str, float] = {}
        for name, (kwh, secs) in parts.items():
            out.update({mn.phase(name, mn.ENERGY_J): kwh * mn.J_PER_KWH,
                        mn.phase(name, mn.EMISSIONS_MG): kwh * mg_per_kwh, mn.phase(name, mn.DURATION_S): secs})
        if mn.GENERATION in parts:
            kwh, secs = parts[mn.GENERATION]
            out[mn.carbon(mn.GENERATION_SHARE_TIME)] = secs / seconds if seconds > 0 else 0.0
            out[mn.carbon(mn.GENERATION_SHARE_ENERGY)] = kwh / energy if energy > 0 else 0.0
        return out

    # ------------------------------------------------------------------ trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return  # one tracker per machine (machine mode would count every rank again)
        import mlflow

        run = mlflow.active_run()
        self.run_id = run.info.run_id if run else None
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.handler = boamps.recording_output()
            self.tracker = self.make_tracker()
            self.tracker.start()
            if getattr(self.tracker, "_start_time", 0) is None:  # codecarbon swallows its own errors
                raise RuntimeError("codecarbon did not start (see its log)")
            self.sources = boamps.tracker_sources(self.tracker)
        except Exception as exc:  # noqa: BLE001 - fail soft
            self._fail("codecarbon could not start", exc)
            return
        intensity = boamps.intensity_source(self.country, self.region, self.offline)
        if intensity.startswith("world average"):
            warnings.warn(f"carbon: {intensity}; set carbon_country to an ISO 3166 alpha-3 code such as FRA or USA",
                          RuntimeWarning, stacklevel=2)
        tags = boamps.source_tags(self.sources, intensity)
        self._tag({**tags, "mg.carbon.status": "ok", "mg.carbon.country": self.country,
                   "mg.carbon.region": self.region, "mg.carbon.pue": str(self.pue)})
        self._last_queued = time.perf_counter()
        self._worker = threading.Thread(target=self._work, name="mg-carbon", daemon=True)
        self._worker.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.tracker is None:
            return
        step = state.global_step
        if state.max_steps and step >= state.max_steps:
            return  # the last point is the final record, logged at train end
        now = time.perf_counter()
        since = now - self._last_queued
        # every N steps, but not more often than codecarbon samples power (more points would only
        # interpolate, and each costs a flush and an MLflow write); or every interval_secs
        if (step % self.interval_steps == 0 and since >= self.min_gap_secs) or (
                self.interval_secs and since >= self.interval_secs):
            self._last_queued = now
            self._queue.put((step, float(state.num_input_tokens_seen or 0)))

    def on_train_end(self, args, state, control, **kwargs):
        if self._worker is None:
            return
        self._queue.put(None)
        self._worker.join(timeout=60)
        self._worker = None
        self.tokens = float(state.num_input_tokens_seen or 0)
        if self.tracker is not None:
            try:
                self._measure(state.global_step, self.tokens, final=True)
            except Exception as exc:  # noqa: BLE001 - fail soft
                self._fail("codecarbon stop failed", exc)
        self.tracker = None
        if self.phases:
            self._tag({"mg.carbon.phases": PHASES_NOTE if self.phase_error is None else f"off: {self.phase_error}"})
        self._log_artifacts()

    # ------------------------------------------------------------------ results
    def last_record(self) -> dict | None:
        return self.final or self._intervals.previous

    def totals(self) -> dict[str, float]:
        """Final figures (empty when codecarbon never produced a record)."""
        record = self.last_record()
        if record is None:
            return {}
        # tokens seen when that record was taken (a tracker that failed mid-run covers fewer tokens)
        totals = boamps.totals_from_record(record, self._previous_tokens, boamps.is_estimated(self.sources))
        for total, cumulative in ((mn.carbon(mn.TOTAL_EMISSIONS_MG), mn.carbon(mn.EMISSIONS_MG)),
                                  (mn.carbon(mn.TOTAL_ENERGY_J), mn.carbon(mn.ENERGY_J))):
            if total in totals:
                totals[total] += self.offsets.get(cumulative, 0.0)
        if record is self.final:  # phases cover the whole window only once the tracker has stopped
            totals.update(self.phase_totals(record))
        return totals

    def _log_artifacts(self) -> None:
        record = self.last_record()
        if self.run_id is None or record is None:
            return
        try:
            client = self._client()
            csv_path = self.output_dir / CSV_NAME
            if csv_path.is_file():
                client.log_artifact(self.run_id, str(csv_path), "carbon")
            run = client.get_run(self.run_id)
            report = boamps.build_report(record, run_id=self.run_id, stage="training", tags=run.data.tags,
                                         params=run.data.params, extra={"tokens": self._previous_tokens or None})
            path = boamps.write_report(report, self.output_dir / "boamps_report.json")
            client.log_artifact(self.run_id, str(path), "carbon")
        except Exception as exc:  # noqa: BLE001 - the metrics are already logged
            warnings.warn(f"carbon report artifacts were not logged: {exc}", RuntimeWarning, stacklevel=2)


def training_callback(cfg, output_dir, gpu_ids: list | None = None):
    """The callback for a :class:`~mg_mlflow.config.TrainConfig`, or None when carbon is off;
    ``gpu_ids``: the GPUs a job on several GPUs uses (their energy is summed)."""
    if not getattr(cfg, "carbon", False):
        return None
    return CarbonCallback(
        output_dir, country=cfg.carbon_country, region=cfg.carbon_region, pue=cfg.carbon_pue,
        interval_steps=cfg.carbon_interval_steps, interval_secs=getattr(cfg, "carbon_interval_secs", 0.0),
        measure_secs=cfg.carbon_measure_secs, offline=getattr(cfg, "carbon_offline", True),
        project_name=getattr(cfg, "run_name", "") or "model-garden", gpu_ids=gpu_ids)
