"""``grpo``: reinforcement learning with rewards, TRL's ``GRPOTrainer`` over a prompt dataset.

For each prompt the policy samples ``num_generations`` completions, every ``--reward`` scores them
(:mod:`mg_mlflow.registry.rewards`; their weighted sum is the total), and each completion's advantage is its
total reward against its group's. The rewards are built and checked when the data loads, before any model
and any run. TRL logs, per step, ``rewards/<name>/mean`` and ``/std`` for every reward, ``reward`` (the
total), ``reward_std``, ``kl`` (beta > 0), ``completions/mean_length`` and ``completions/clipped_ratio``
and the policy-ratio clip ratios ``clip_ratio/*``; the MLflow callback logs them under these names. This
objective adds ``time/generation_s`` and ``time/rewards_s`` per step, a sampled-completions table every
``sample_steps`` steps (artifact ``samples/step_NNNNN.json``) and the run's time split in its summary.

Completions are sampled by vLLM inside the training process (TRL's ``use_vllm``, colocate mode: vLLM shares
the GPU, ``vllm_gpu_memory_utilization`` of it; on the Unsloth backend with an adapter, Unsloth's fast inference)
on CUDA when vllm is installed, else by transformers' ``model.generate`` (``--generation`` chooses). With carbon
on, each generation call is a carbon phase of the run's tracker (``system/carbon/generation/*``; the rest of the
window is ``system/carbon/optimisation/*``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from pathlib import Path

from mg_mlflow.config import trainer_args_for
from mg_mlflow.data.prompts import check_columns, load_prompt_records, prompt_text
from mg_mlflow.errors import MGError
from mg_mlflow.training.common import trainer_kwargs
from mg_mlflow.training.objectives.base import Objective, load_class
from mg_mlflow.registry.rewards import build_rewards, check_rewards, text_of

STEP_METRICS = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio",
                "clip_ratio/region_mean", "time/generation_s", "time/rewards_s")


def resolve_generation(choice: str, cuda: bool | None = None, vllm: bool | None = None) -> tuple[str, str]:
    """(vllm | generate, why): vLLM in colocate mode needs CUDA and the vllm package (``cuda``/``vllm``: what
    this machine has, found out when not given)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if vllm is None:
        vllm = importlib.util.find_spec("vllm") is not None
    if choice == "generate":
        return "generate", "asked for (--generation generate)"
    if cuda and vllm:
        return "vllm", "CUDA and vllm are here: vLLM samples in colocate mode, sharing the GPU"
    if choice == "vllm":
        missing = "a CUDA GPU" if not cuda else "the vllm package (pip install 'model-garden-mlflow[gpu]')"
        raise MGError(f"--generation vllm needs {missing}",
                      hint="use --generation generate (transformers' model.generate) or auto")
    return "generate", "no CUDA GPU" if not cuda else "vllm is not installed"


def carbon_meter(trainer):
    """The run's carbon callback among the trainer's callbacks (None when carbon is off)."""
    from mg_mlflow.tracking.carbon import CarbonCallback

    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, CarbonCallback)), None)


class GRPO(Objective):
    """Group relative policy optimisation: sample a group of answers per prompt, move toward the better-rewarded."""

    name, label = "grpo", "GRPO"
    trainer_class = ("trl", "GRPOTrainer")
    step_metrics = STEP_METRICS

    def __init__(self, cfg):
        super().__init__(cfg)
        self.rewards = []
        self.generation, self.generation_why = "generate", ""
        self.seconds = {"generation": 0.0, "rewards": 0.0}
        self._trainer = None

    @property
    def loss_type(self) -> str:
        return self.cfg.loss_type or "dapo"

    def load_records(self, source: str, split: str):
        return load_prompt_records(source, split)

    def load_data(self):
        """Prompts (file:line), then every reward built and checked on them, before any model or run."""
        cfg = self.cfg
        train, evaluation = super().load_data()
        self.rewards = build_rewards(cfg, list(cfg.reward), train.records)
        check_rewards(self.rewards, train)
        if evaluation is not None:
            check_columns(evaluation, {c: r.name for r in self.rewards for c in r.columns})
        self.generation, self.generation_why = resolve_generation(cfg.generation)
        return train, evaluation

    def own_settings(self) -> dict:
        cfg = self.cfg
        out = {"beta": cfg.beta, "loss_type": self.loss_type, "num_generations": cfg.num_generations,
               "max_completion_length": cfg.max_completion_length, "temperature": cfg.temperature,
               "epsilon": cfg.epsilon, "scale_rewards": cfg.scale_rewards,
               "reward_weights": [r.weight for r in self.rewards], "log_completions": False,
               "use_vllm": self.generation == "vllm"}
        if self.generation == "vllm":
            out["vllm_mode"] = "colocate"
        return out

    def load_kwargs(self, backend: str) -> dict:
        """Unsloth with vLLM generation and an adapter: Unsloth's fast inference (its vLLM engine shares the
        weights being trained; TRL's colocated vLLM cannot take in 4-bit weights), vLLM's share of the GPU
        from ``--trainer-arg vllm_gpu_memory_utilization`` when given (else Unsloth's default), adapters up to
        ``lora_r``. Full fine-tuning keeps TRL's colocated vLLM: Unsloth's fast inference does not train
        full weights."""
        cfg = self.cfg
        if backend != "unsloth" or self.generation != "vllm" or cfg.method == "full":
            return {}
        out = {"fast_inference": True, "max_lora_rank": cfg.lora_r}
        share = trainer_args_for(cfg).get("vllm_gpu_memory_utilization")
        if share is not None:
            out["gpu_memory_utilization"] = share
        return out

    def params(self) -> dict[str, str]:
        return {"loss_type_resolved": self.loss_type, "generation_resolved": self.generation,
                "rewards_resolved": ",".join(f"{r.name}:{r.weight:g}" for r in self.rewards)}

    def reference_note(self) -> str:
        """GRPOTrainer keeps its own reference when beta > 0 (the KL term)."""
        if self.cfg.beta == 0:
            return "none (beta=0: no KL term)"
        if self.cfg.method == "full":
            return "a frozen copy of the starting model, loaded by TRL's GRPOTrainer"
        return "the starting model (the adapter switched off)"

    def settings(self, output_dir: Path, has_eval: bool, backend: str):
        cls = load_class(self.settings_class)  # GRPOConfig: no max_length (prompts and completions have their own)
        return cls(**trainer_kwargs(self.cfg, output_dir, has_eval, backend), **self.own_settings())

    def trainer(self, model, tokenizer, peft_config, output_dir: Path, backend: str, train_data, eval_data,
                callbacks: list, ref_model=None):
        from datasets import Dataset
        from trl import GRPOTrainer

        trainer = GRPOTrainer(
            model=model, reward_funcs=[r.func for r in self.rewards],
            args=self.settings(output_dir, eval_data is not None, backend),
            train_dataset=Dataset.from_list(self.rows(train_data.records)),
            eval_dataset=Dataset.from_list(self.rows(eval_data.records)) if eval_data else None,
            processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
        return self.adapt(trainer)

    def adapt(self, trainer):
        self._trainer = trainer
        # GRPOTrainer counts prompt + completion tokens itself (state.num_input_tokens_seen); transformers'
        # own count finds no input_ids in its batches and would warn every step
        trainer._track_num_input_tokens = lambda inputs: None
        self._time_phase(trainer, "_generate", "generation", carbon_meter(trainer))
        self._time_phase(trainer, "_calculate_rewards", "rewards")
        if self.cfg.sample_steps > 0:
            self._log_samples(trainer, self.cfg.sample_steps)
        return trainer

    def _time_phase(self, trainer, method: str, phase: str, meter=None) -> None:
        """Wrap ``trainer.<method>`` (an instance attribute) to add its seconds to ``time/<phase>_s``, and its
        time and energy to the carbon phase ``phase`` when ``meter`` (the run's carbon callback) is given."""
        inner = getattr(trainer, method)

        def timed(*args, **kwargs):
            with meter.phase(phase) if meter is not None else contextlib.nullcontext():
                started = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    seconds = time.perf_counter() - started
                    self.seconds[phase] += seconds
                    mode = "train" if trainer.model.training else "eval"
                    trainer._metrics[mode][f"time/{phase}_s"].append(seconds)

        setattr(trainer, method, timed)

    def _log_samples(self, trainer, every: int) -> None:
        """After each log of step 1 and of every ``every``-th step: the last sampled completions, each reward's
        score, the weighted total and the advantage, as an MLflow table ``samples/step_NNNNN.json``."""
        inner, logged = trainer.log, set()

        def log(logs, *args, **kwargs):
            out = inner(logs, *args, **kwargs)
            step = trainer.state.global_step
            if "loss" in logs and step not in logged and (step == 1 or step % every == 0):
                logged.add(step)
                self.log_sample_table(trainer, step)
            return out

        trainer.log = log

    def log_sample_table(self, trainer, step: int) -> None:
        import mlflow
        import pandas as pd

        if mlflow.active_run() is None or not trainer._logs["prompt"]:
            return
        frame = pd.DataFrame({
            "step": step,
            "prompt": [prompt_text(p) if isinstance(p, list) else str(p) for p in trainer._logs["prompt"]],
            "completion": [text_of(c) for c in trainer._logs["completion"]]})
        for reward in self.rewards:
            frame[reward.name] = list(trainer._logs["rewards"].get(reward.name, []))[:len(frame)]
        frame["total"] = sum(frame[r.name].fillna(0.0) * r.weight for r in self.rewards)
        frame["advantage"] = list(trainer._logs["advantages"])[:len(frame)]
        mlflow.log_table(frame, artifact_file=f"samples/step_{step:05d}.json")

    def summary(self) -> dict[str, float]:
        """The run's time split: generation, reward scoring, and the rest (optimisation: log-probs, loss,
        backward, optimizer), with the generation share of the training time."""
        trainer = self._trainer
        runtime = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h),
                       None) if trainer is not None else None
        out = {"generation_seconds": self.seconds["generation"], "reward_seconds": self.seconds["rewards"]}
        if runtime:
            out["optimisation_seconds"] = max(0.0, runtime - self.seconds["generation"] - self.seconds["rewards"])
            out["generation_share"] = self.seconds["generation"] / runtime
        return out
