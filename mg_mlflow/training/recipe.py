"""The one training path, top to bottom: data -> backend -> MLflow run -> train -> save -> verify ->
register, for every modality.

``model-garden train`` / ``train-vision``, ``mlflow run . -e train`` / ``-e train_vision``, sweeps and
jobs all end here with a validated config. The modality is a parameter: the config's class picks a
small strategy (:class:`~mg_mlflow.training.text.TextModality`,
:class:`~mg_mlflow.training.vision.VisionModality`) that says how records load, how the model and its
processor load, how records become batches and what probe verifies the reload; every guarantee
(fail before a run exists, the same MLflow record, verification before registration) is written once,
here and in :mod:`mg_mlflow.training.save`.
"""

from __future__ import annotations

from contextlib import nullcontext

from mg_mlflow.env import setup_env
from mg_mlflow.errors import MGError
from mg_mlflow.registry.base_ref import loaded_revision, resolve_base_model
from mg_mlflow.tracking.run import run_context, use_tracking_uri
from mg_mlflow.training import distributed
from mg_mlflow.training.backends import choose_backend
from mg_mlflow.training.common import (disk_full_is_clear, log_loss_curve, log_objective, log_truncation, run_name, run_tags,
                                       source_tags, start_run_record, timed_train, train_summary,
                                       training_callbacks)
from mg_mlflow.training.progress import TrainProgress
from mg_mlflow.training.result import TrainResult
from mg_mlflow.training.targets import check_lora_targets
from mg_mlflow.training.save import save_and_register
from mg_mlflow.training.text import TextModality
from mg_mlflow.training.vision import VisionModality
from mg_mlflow.vision_config import VisionTrainConfig


def modality_for(cfg):
    """The strategy for a config: VisionTrainConfig -> vision, TrainConfig -> text (TRL's sft.py
    picks the model class from the config the same way)."""
    if isinstance(cfg, VisionTrainConfig):
        return VisionModality(cfg)

    return TextModality(cfg)


def preflight(cfg):
    """Every check that needs no MLflow run, in the order ``train`` makes them: the records (file:line),
    the base model (a full model with a known model_type and a tokenizer, not an adapter), the LoRA
    target modules. (modality, train data, eval data, base, revision); a sweep calls it before its
    first trial."""
    modality = modality_for(cfg)
    train_data, eval_data = modality.load_data()  # every bad record, as file:line, before any model
    # a missing or unusable base fails before any run; a registered adapter is a start for text runs
    base, revision = resolve_base_model(cfg.base_model, registered_adapter_ok=modality.name == "text")
    base, revision = modality.starting_point(base, revision)  # a registered adapter: its base, or merged
    check_lora_targets(cfg, base, revision)  # from the weight files' names, before any run exists
    modality.prepare(base, revision, train_data, eval_data)  # tokenized and masked, before any run exists
    return modality, train_data, eval_data, base, revision


def train(cfg, show_progress: bool | None = None, callbacks=()) -> TrainResult:
    """Train, log, verify and register one model; ``callbacks`` are extra transformers
    ``TrainerCallback``s (e.g. a sweep's pruning callback)."""
    setup_env()

    if distributed.needs_launch(cfg):  # called in-process (a sweep trial, a script): one process only
        raise MGError(f"num_gpus={cfg.num_gpus} needs one process per GPU, and this is a single process",
                      hint=f"run `model-garden train --num-gpus {cfg.num_gpus}` (it starts them with torchrun), "
                           "or torchrun yourself; sweeps train each trial on one device")
    modality, train_data, eval_data, base, revision = preflight(cfg)
    backend, why = choose_backend(cfg.backend, cfg.method)  # imports unsloth first when chosen

    import mlflow
    import torch

    from mg_mlflow.training.resume import (StopOnSignal, checkpoint_to_resume, earlier_segment,
                                           with_spooled_points, write_checkpoints_atomically)
    from mg_mlflow.training import step_stats

    tags = {**run_tags(modality.name, backend, cfg.method, cfg.objective), **modality.run_tags()}
    name = run_name(cfg, modality.name, backend)
    # several GPUs (torchrun): every rank trains; only rank 0 has an MLflow run and logs, saves, registers
    main = distributed.is_main()
    distributed.start_process_group()
    if main:
        use_tracking_uri()
    earlier = earlier_segment(cfg.resume) if cfg.resume and main else None
    run_ctx = run_context(cfg.experiment, name, cfg.system_metrics, tags={**tags, **source_tags(modality.command)},
                          name_given=bool(cfg.run_name), resume=cfg.resume) if main else nullcontext()
    with StopOnSignal() as stopper, run_ctx as run:
        run_id, output_dir = (start_run_record(cfg, run, why, tags, train_data, eval_data, modality.profiles)
                              if main else ("", None))
        if main:
            if earlier is not None:
                earlier = with_spooled_points(earlier, output_dir)
            log_objective(modality)
            distributed.log_world_size()
            distributed.record_run_id(run_id)
        output_dir = distributed.share(output_dir)  # checkpoints of every rank in rank 0's folder
        with disk_full_is_clear(output_dir):
            checkpoint = distributed.share(checkpoint_to_resume(cfg.resume, output_dir)
                                           if cfg.resume and main else None)

            model, processing, peft_config = modality.load(backend, base, revision)
            loaded = loaded_revision(base, revision)  # the hub commit actually loaded, for the lineage
            if main:  # e.g. the vision samples' answers before training, which rank 0 logs
                log_truncation(cfg, modality.profiles)
                modality.before_training(model, processing, train_data, eval_data)
            with TrainProgress(f"{modality.command} {backend}/{cfg.method}",
                               enabled=show_progress if main else False) as progress:
                metrics_cb, carbon_cb, default_callbacks = (training_callbacks(cfg, output_dir, progress, earlier)
                                                            if main else (None, None, []))
                trainer = modality.trainer(model, processing, peft_config, output_dir, backend, train_data,
                                           eval_data, [*default_callbacks, stopper, *callbacks],
                                           ref_model=modality.reference_model(backend, base, revision))
                write_checkpoints_atomically(trainer)  # a checkpoint cut short never looks complete
                guard = step_stats.install_guard(trainer, cfg)  # on every rank: a NaN/inf loss ends the run
                step_stats.install(trainer, cfg, metrics_cb, guard)  # on a GPU: no step waits for its loss
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                train_seconds = timed_train(trainer, evaluate_after=eval_data is not None and cfg.eval_steps <= 0,
                                            resume_from=checkpoint)
            stopper.raise_if_stopped(trainer.state.global_step)  # checkpoint saved: the run ends KILLED
            if guard.should_stop:  # the run ends FAILED with the step; nothing is saved or registered
                raise guard.error()
            if not main:  # rank > 0: trained its share; saving and registering are rank 0's
                return TrainResult(run_id="", output_dir=output_dir, model_dir=output_dir / "model")

            mlflow.flush_async_logging()  # every per-step point is stored before the summary
            summary = train_summary(trainer, metrics_cb, carbon_cb, train_seconds)
            model = trainer.model.eval()
            summary.update(modality.after_training(model, processing, output_dir))
            mlflow.log_metrics(summary)
            log_loss_curve(metrics_cb, output_dir, f"{name} ({modality.name})")
            if guard.diverged:  # on_divergence=continue: the record is complete; NaN weights are never saved
                mlflow.set_tag("mg.diverged_at", guard.where())
                if not step_stats.weights_finite(model):
                    raise guard.error()

            result = save_and_register(cfg, modality, model, processing, backend, output_dir, train_data,
                                       eval_data, summary, revision=loaded)
        result.run_id = run_id
        result.metrics = summary
        return result

