"""The configuration of a text fine-tuning run, declared once and grouped by what it is about.

Every field of :class:`TrainConfig` is at the same time a YAML key, a ``--set key=value`` override,
a ``model-garden train`` option (listed under its group's heading in ``--help``) and an MLproject
parameter; :mod:`mg_mlflow.options` generates and coerces all of them and :func:`build_config`
reports every problem at once as one :class:`~mg_mlflow.errors.ConfigError`.

``trainer_args`` passes any other setting of TRL's ``SFTConfig`` (transformers' ``TrainingArguments``
for vision runs) through, checked against that class before anything runs.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any

from mg_mlflow.errors import ConfigError
from mg_mlflow.names import alias_problem, name_problem
from mg_mlflow.options import (build_config, check_values, coerce, coerce_hint, did_you_mean, option, parse_bool,
                               to_dict, to_yaml)

__all__ = ["TrainConfig", "build_config", "coerce", "parse_bool", "to_dict", "to_yaml", "trainer_args_for",
           "trainer_arg_problems", "trainer_keys_set_by", "field_help", "BACKENDS", "METHODS", "SAVE_METHODS",
           "DTYPES", "SCHEDULERS", "FORMATS", "BATCHING", "GROUPS", "OBJECTIVES", "OBJECTIVE_SETTINGS",
           "DPO_LOSSES", "KTO_LOSSES", "GRPO_LOSSES", "REFERENCES"]

BACKENDS = ("auto", "unsloth", "hf")
METHODS = ("lora", "qlora", "full")
SAVE_METHODS = ("lora", "merged_16bit")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
              "polynomial", "inverse_sqrt")
FORMATS = ("auto", "instruction", "messages", "sharegpt", "prompt_completion")
BATCHING = ("auto", "padded", "padding_free", "packed")
OBJECTIVES = ("sft", "dpo", "kto", "orpo", "simpo", "grpo", "reward")
# the TRL settings class of each objective (TRL 1.16 keeps ORPO and CPO/SimPO under trl.experimental):
# trainer_args are checked against it
OBJECTIVE_SETTINGS = {"sft": ("trl", "SFTConfig"), "dpo": ("trl", "DPOConfig"), "kto": ("trl", "KTOConfig"),
                      "orpo": ("trl.experimental.orpo", "ORPOConfig"), "simpo": ("trl.experimental.cpo", "CPOConfig"),
                      "grpo": ("trl", "GRPOConfig"), "reward": ("trl", "RewardConfig")}
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")
GRPO_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's GRPOConfig
SCALE_REWARDS = ("group", "batch", "none")
GENERATION = ("auto", "vllm", "generate")
REFERENCES = ("continue", "fresh")

# The parts of a run, in the order `--help` lists them.
MODEL, OBJECTIVE, RL, DATA, LORA, OPTIM, CHECKPOINTS, TRACKING, CARBON, REGISTRY = (
    "Model", "Objective", "Reinforcement learning (grpo)", "Data", "LoRA", "Optimisation",
    "Evaluation and checkpoints", "Tracking", "Carbon", "Registry")
GROUPS = (MODEL, OBJECTIVE, RL, DATA, LORA, OPTIM, CHECKPOINTS, TRACKING, CARBON, REGISTRY)


def _in(group: str):
    """``option`` for the fields of one group; ``trainer_keys``: the TrainingArguments / SFTConfig
    settings the field drives (``--trainer-arg`` refuses them and names the field's option)."""
    return functools.partial(option, group=group)


_model, _objective, _data, _lora, _optim = _in(MODEL), _in(OBJECTIVE), _in(DATA), _in(LORA), _in(OPTIM)
_rl = _in(RL)
_checkpoints, _tracking, _carbon, _registry = _in(CHECKPOINTS), _in(TRACKING), _in(CARBON), _in(REGISTRY)

# Settings Model Garden's training path fixes itself (no option of its own sets them), with the reason.
SET_BY_MODEL_GARDEN = {
    "report_to": "Model Garden logs to MLflow through its own callback",
    "disable_tqdm": "Model Garden draws its own progress bar (--progress)",
    "logging_first_step": "the first step's loss is always logged",
    "include_num_input_tokens_seen": "the token metrics need it (see --metrics-sync-steps)",
    "use_cpu": "the device is chosen from the machine",
    "dataset_num_proc": "the data is tokenized in this process",
    "remove_unused_columns": "the vision collator reads every column",
    "label_names": "the vision collator names the labels",
    "dataloader_num_workers": "the vision collator runs in this process",
}

TRAINER_ARGS_HELP = (
    "any other setting of TRL's SFTConfig (vision: transformers' TrainingArguments), repeatable: "
    "--trainer-arg optim=adamw_torch --trainer-arg max_grad_norm=0.5. YAML: trainer_args: {optim: adamw_torch}; "
    "--set and mlflow run -P take KEY=VALUE pairs separated by commas: trainer_args=\"optim=adamw_torch,"
    "max_grad_norm=0.5\". Values are typed from the SFTConfig field; a setting Model Garden takes from one "
    "of its own options (learning_rate, max_steps, ...) is refused with that option's name; each is logged "
    "as the MLflow param trainer_args.KEY")


# the settings of the built-in rewards, shared by `train --objective grpo` and `evaluate --reward`
REWARD_HELP = {
    "reward_column": "the dataset column exact_match and contains compare each completion with",
    "reward_regex": "the pattern of the regex reward (Python re, searched in the completion): 1 when it matches, "
                    "else 0",
    "reward_schema": "the JSON Schema file of the json_schema reward: 1 when the completion parses as JSON and "
                     "validates, 0.5 when it parses only, else 0",
    "reward_length_target": "the length reward's target in characters: the score is -|length - target| / target "
                            "(0 at the target)",
}


@dataclass
class TrainConfig:
    """One text fine-tuning run."""

    # ---- model: what is trained, and how
    base_model: str = _model("", "Hugging Face hub id, local model folder, or models:/ URI of a registered base model")
    backend: str = _model("auto", "training backend: unsloth (FastLanguageModel), hf (transformers+peft+trl) or auto",
                          BACKENDS)
    method: str = _model("lora", "lora, qlora (4-bit base, needs CUDA + bitsandbytes) or full fine-tuning", METHODS)
    dtype: str = _model("auto", "compute dtype; auto = bfloat16 on a GPU that supports it, else float32", DTYPES,
                        trainer_keys=("bf16", "fp16"))
    # ---- objective: what the training optimises (docs/preference.md)
    objective: str = _objective("sft", "what training optimises: sft (supervised: imitate the answers), dpo "
                                       "(prefer chosen over rejected answers, against a frozen reference), kto "
                                       "(unpaired answers labelled good or bad), orpo (SFT plus an odds-ratio "
                                       "preference term, no reference), simpo (length-normalised preference with "
                                       "a margin, no reference), grpo (reinforcement learning: sample answers "
                                       "to prompts, score them with --reward, move toward the better ones), "
                                       "reward (a reward model: a score head trained on preference pairs, usable "
                                       "as a grpo --reward by its models:/ URI); each needs its data shape: sft "
                                       "conversations, dpo/orpo/simpo/reward prompt/chosen/rejected pairs, kto "
                                       "prompt/completion + label, grpo prompts (+ columns the rewards read)",
                                OBJECTIVES)
    beta: float = _objective(0.1, "preference objectives: how far the model may move from the reference (dpo, "
                                  "kto, grpo: the KL weight, grpo 0 = no reference model; orpo: the odds-ratio "
                                  "weight; simpo: the reward scale); larger = stay closer", trainer_keys=("beta",))
    loss_type: str = _objective("", "the preference loss: dpo one of " + ", ".join(DPO_LOSSES) + "; kto one of "
                                + ", ".join(KTO_LOSSES) + "; grpo one of " + ", ".join(GRPO_LOSSES) + " (how token losses are "
                                "averaged: grpo per sequence, dr_grpo by a constant, dapo/bnpo by the tokens of "
                                "the batch); empty = the objective's own (dpo sigmoid, kto kto, grpo dapo; orpo "
                                "and simpo have one each)", trainer_keys=("loss_type",))
    label_smoothing: float = _objective(0.0, "dpo (sigmoid loss) and simpo: the assumed share of preference "
                                             "labels that are wrong, in [0, 0.5) (robust DPO)",
                                        trainer_keys=("label_smoothing",))
    reference: str = _objective("continue", "training from a registered LoRA adapter (base_model models:/NAME@"
                                            "ALIAS): continue (train that adapter further; the reference is the "
                                            "registered model) or fresh (merge it into its base and train a new "
                                            "adapter on the merged model, which is the reference)", REFERENCES)
    # ---- reinforcement learning (docs/reinforcement-learning.md)
    reward: list[str] = _rl([], "grpo: how each completion is scored, repeatable, NAME[:WEIGHT]: built-ins "
                                "exact_match and contains (against --reward-column), regex (--reward-regex), "
                                "json_schema (--reward-schema), length (--reward-length-target), format "
                                "(<think>...</think><answer>...</answer>); a function of yours, FILE.py:FUNCTION "
                                "(TRL's signature: prompts, completions, **columns -> one float per completion); "
                                "a registered reward model, models:/NAME@ALIAS; the total reward is the weighted "
                                "sum", flags=("--reward",), metavar="NAME[:WEIGHT]", trainer_keys=("reward_weights",))
    reward_column: str = _rl("answer", REWARD_HELP["reward_column"])
    reward_regex: str = _rl("", REWARD_HELP["reward_regex"])
    reward_schema: str = _rl("", REWARD_HELP["reward_schema"])
    reward_length_target: int = _rl(0, REWARD_HELP["reward_length_target"])
    num_generations: int = _rl(4, "completions sampled per prompt: the group whose rewards are compared; "
                                  "batch_size x num_gpus x grad_accum must be a multiple of it (whole groups over "
                                  "the ranks)", trainer_keys=("num_generations",))
    max_completion_length: int = _rl(64, "longest completion sampled, in tokens (a longer one is cut and counted in "
                                         "completions/clipped_ratio)", trainer_keys=("max_completion_length",))
    temperature: float = _rl(1.0, "sampling temperature of the completions (higher = more varied groups)",
                             trainer_keys=("temperature",))
    epsilon: float = _rl(0.2, "the clipping range of the policy ratio (PPO's epsilon): how far one update may "
                              "move a token's probability", trainer_keys=("epsilon",))
    scale_rewards: str = _rl("group", "divide each advantage by the reward std of its group, of the whole "
                                      "batch, or none (Dr. GRPO: no difficulty bias)", SCALE_REWARDS,
                             trainer_keys=("scale_rewards",))
    generation: str = _rl("auto", "how completions are sampled: vllm (TRL's vLLM in colocate mode, sharing the "
                                  "GPU; needs CUDA and vllm), generate (transformers' model.generate), auto (vllm "
                                  "on CUDA when vllm is installed, else generate)", GENERATION,
                          trainer_keys=("use_vllm", "vllm_mode"))
    sample_steps: int = _rl(10, "log a table of sampled completions with each reward's score every N steps "
                                "(artifact samples/step_NNNNN.json; 0 = never)", trainer_keys=("log_completions",))
    # ---- data
    dataset: str = _data("", "JSONL/JSON/CSV/Parquet file, or a Hugging Face dataset name")
    dataset_format: str = _data("auto", "record format: instruction (Alpaca: instruction, input, output, optional "
                                        "system and history), messages (OpenAI, tool calls included), sharegpt "
                                        "(conversations of from/value turns), prompt_completion (TRL), or auto: "
                                        "detected from the records and logged as the param dataset_format_resolved",
                                FORMATS)
    columns: dict[str, Any] = _data({}, "column map applied before anything else, FIELD=COLUMN pairs: --columns "
                                        "instruction=question,output=answer reads the file's question and answer "
                                        "columns as instruction and output (YAML: columns: {instruction: question}); "
                                        "also for hub datasets", metavar="FIELD=COLUMN")
    ignore_columns: list[str] = _data([], "columns left out on purpose (comma-separated): a column the format does "
                                          "not use is an error otherwise, e.g. --ignore-columns id,label")
    dataset_split: str = _data("train", "split to read when `dataset` is a hub dataset name")
    eval_dataset: str = _data("", "optional evaluation file or hub dataset name")
    eval_split: float = _data(0.0, "fraction of the training data held out for evaluation when no eval_dataset is "
                                   "given (0 = none)")
    max_seq_length: int = _data(512, "longest tokenized example; longer ones are truncated",
                                trainer_keys=("max_length",))
    batching: str = _data("auto", "how examples become batches: padded (pad each batch to its longest example), "
                                  "padding_free (the same examples in one row without pad tokens, kept apart by "
                                  "position ids), packed (examples packed into bins of max_seq_length; batch_size "
                                  "counts bins), auto (the measured rule for the backend and device, see README); "
                                  "the loss is the same in every mode", BATCHING,
                          trainer_keys=("packing", "packing_strategy", "padding_free"))
    pad_to_multiple_of: int = _data(-1, "pad each batch's length up to a multiple of N (text runs): fewer distinct "
                                        "batch shapes for the GPU to warm up on; 0 = to the longest example; -1 = "
                                        "auto (the measured rule: 64 for padded batches on a GPU, 0 on CPU)",
                                    trainer_keys=("pad_to_multiple_of",))
    train_on_responses_only: bool = _data(True, "compute the loss on the assistant turns only (every assistant "
                                                "turn of a conversation); system, user and tool turns are context; "
                                                "off: on every token",
                                          trainer_keys=("completion_only_loss", "assistant_only_loss"))
    train_on_tool_calls: bool = _data(True, "with train_on_responses_only: also train the assistant turns that call "
                                            "tools (tool_calls, ShareGPT function_call); off: they are context too")
    # ---- LoRA
    lora_r: int = _lora(16, "LoRA rank")
    lora_alpha: int = _lora(32, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = _lora(0.0, "dropout on the LoRA branch")
    lora_target_modules: str = _lora("all-linear", "comma-separated module names, or all-linear")
    # ---- optimisation
    max_steps: int = _optim(-1, "stop after this many optimizer steps (-1 = run `epochs`)", trainer_keys=("max_steps",))
    epochs: float = _optim(1.0, "number of passes over the training data (ignored when max_steps > 0)",
                           trainer_keys=("num_train_epochs",))
    batch_size: int = _optim(4, "per-device batch size",
                             trainer_keys=("per_device_train_batch_size", "per_device_eval_batch_size"))
    grad_accum: int = _optim(1, "gradient accumulation steps", trainer_keys=("gradient_accumulation_steps",))
    learning_rate: float = _optim(2e-4, "peak learning rate", trainer_keys=("learning_rate",))
    lr_scheduler: str = _optim("linear", "learning-rate schedule (transformers names)", SCHEDULERS,
                               trainer_keys=("lr_scheduler_type",))
    warmup_steps: float = _optim(0.0, "learning-rate warmup: a number of steps (>= 1) or a fraction of all steps (< 1)",
                                 trainer_keys=("warmup_steps", "warmup_ratio"))
    weight_decay: float = _optim(0.0, "AdamW weight decay", trainer_keys=("weight_decay",))
    seed: int = _optim(42, "random seed for data order and initialisation", trainer_keys=("seed", "data_seed"))
    gradient_checkpointing: bool = _optim(False, "trade compute for memory by recomputing activations",
                                          trainer_keys=("gradient_checkpointing",))
    on_divergence: str = _optim("stop", "a NaN/inf loss or gradient norm: stop (the run fails with the step, "
                                        "nothing registered) or continue (train on, logged as NaN; a model whose "
                                        "logits are not finite is never registered)", ("stop", "continue"),
                                trainer_keys=("logging_nan_inf_filter",))
    num_gpus: int = _optim(1, "data-parallel training on N GPUs of this machine (torchrun; one MLflow run, one "
                              "registered version); MG_DDP_CPU=1 runs the N ranks on the CPU (gloo) instead")
    trainer_args: dict[str, Any] = _optim({}, TRAINER_ARGS_HELP, flags=("--trainer-arg",), metavar="KEY=VALUE")
    # ---- evaluation and checkpoints
    eval_steps: int = _checkpoints(0, "evaluate every N steps (0 = only at the end, when there is an eval set)",
                                   trainer_keys=("eval_steps", "eval_strategy"))
    save_steps: int = _checkpoints(0, "write a checkpoint every N steps (0 = none; Ctrl-C/SIGTERM still save one)",
                                   trainer_keys=("save_steps", "save_strategy"))
    checkpoint_artifacts: bool = _checkpoints(False, "also log each checkpoint as a run artifact (resume on another "
                                                     "machine)")
    resume: str = _checkpoints("", "id of an interrupted run to continue from its last checkpoint: the SAME MLflow "
                                   "run goes on (its config is the base; options given now override it)",
                               trainer_keys=("resume_from_checkpoint",))
    output_dir: str = _checkpoints("", "where checkpoints and the final model are written (default: "
                                       "$MG_HOME/outputs/<run id>)", trainer_keys=("output_dir",))
    # ---- tracking
    experiment: str = _tracking("model-garden", "MLflow experiment name (ignored under `mlflow run`, which chooses it)")
    run_name: str = _tracking("", "MLflow run name", trainer_keys=("run_name",))
    logging_steps: int = _tracking(1, "log metrics every N steps", trainer_keys=("logging_steps",))
    metrics_sync_steps: int = _tracking(0, "read the per-step loss back from the GPU every N steps instead of every "
                                           "step (every step still gets its point; no step waits for the device); "
                                           "0 = auto: 10 on a GPU, 1 on the CPU")
    system_metrics: bool = _tracking(True, "log MLflow system metrics (CPU, memory, GPU)")
    # ---- carbon (see mg_mlflow/tracking/carbon.py)
    carbon: bool = _carbon(True, "measure energy and CO2 with codecarbon and log them as metrics")
    carbon_country: str = _carbon("USA", "ISO 3166 alpha-3 country code for the grid carbon intensity (offline mode)")
    carbon_region: str = _carbon("", "optional region within the country (e.g. a US state or Canadian province)")
    carbon_pue: float = _carbon(1.0, "power usage effectiveness of the data centre")
    carbon_interval_steps: int = _carbon(10, "log carbon metrics every N optimizer steps, at most once per "
                                             "carbon_measure_secs")
    carbon_interval_secs: float = _carbon(0.0, "also log a carbon point every N seconds (0 = by steps only)")
    carbon_offline: bool = _carbon(True, "codecarbon offline mode (no network): grid intensity from its bundled data")
    carbon_measure_secs: float = _carbon(5.0, "codecarbon's power sampling interval in seconds")
    # ---- registry: where the result goes
    save_method: str = _registry("lora", "register the LoRA adapter (lora) or the merged full model (merged_16bit)",
                                 SAVE_METHODS)
    register_as: str = _registry("", "registered model name (default: derived from the base model); 'none' = save "
                                     "locally only, log and register nothing")
    alias: str = _registry("", "registry alias to point at the new version, e.g. champion")
    verify_tolerance: float = _registry(1e-3, "max |logit difference| between trained and reloaded model before "
                                              "registering")

    @property
    def trainer_args_of(self) -> tuple[str, str]:
        """The settings class trainer_args are checked against: (module, class), by objective."""
        return OBJECTIVE_SETTINGS.get(self.objective, OBJECTIVE_SETTINGS["sft"])

    def validate(self) -> None:
        problems = check_values(self) + trainer_arg_problems(self)
        if not self.base_model:
            problems.append("base_model is required (a hub id, a model folder or a models:/ URI)")
        if not self.dataset:
            problems.append("dataset is required (a JSONL/JSON/CSV/Parquet file or a hub dataset name)")
        for name in ("batch_size", "grad_accum", "max_seq_length", "lora_r", "lora_alpha", "logging_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_to_multiple_of < -1:
            problems.append(f"pad_to_multiple_of must be >= 0 (0 = off) or -1 (auto), got {self.pad_to_multiple_of}")
        if self.metrics_sync_steps < 0:
            problems.append(f"metrics_sync_steps must be >= 0 (0 = auto), got {self.metrics_sync_steps}")
        if self.num_gpus < 1:
            problems.append(f"num_gpus must be >= 1, got {self.num_gpus}")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be -1 (use epochs) or > 0, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            problems.append(f"epochs must be > 0 when max_steps is -1, got {self.epochs}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.eval_split < 1.0:
            problems.append(f"eval_split must be in [0, 1), got {self.eval_split}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.method == "full" and self.save_method == "lora":
            problems.append("method=full trains every weight, so there is no adapter: use save_method=merged_16bit")
        if self.eval_dataset and self.eval_split:
            problems.append("give either eval_dataset or eval_split, not both")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        for name in ("save_steps", "eval_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not self.experiment.strip():
            problems.append("experiment: the MLflow experiment name cannot be empty (default: model-garden)")
        if self.register_as and self.registers:
            problems += [p for p in [name_problem(self.register_as, "register_as")] if p]
        if self.alias:
            problems += [p for p in [alias_problem(self.alias, "alias")] if p]
        problems += self.objective_problems()
        if problems:
            raise ConfigError(problems, "the training configuration")

    def objective_problems(self) -> list[str]:
        """The objective's own settings: a loss it does not have, a beta or smoothing out of range."""
        problems = []
        losses = {"dpo": DPO_LOSSES, "kto": KTO_LOSSES, "grpo": GRPO_LOSSES}.get(self.objective, ())
        if self.loss_type and not losses:
            problems.append(f"loss_type={self.loss_type!r}: objective {self.objective} has no loss variants "
                            "(loss_type is for dpo, kto and grpo)")
        elif self.loss_type and self.loss_type not in losses:
            problems.append(f"loss_type={self.loss_type!r} is not a {self.objective} loss: one of {', '.join(losses)}")
        if self.beta < 0 or (self.beta == 0 and self.objective != "grpo"):
            problems.append(f"beta must be > 0 (grpo: >= 0), got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        elif self.label_smoothing and self.objective not in ("dpo", "simpo"):
            problems.append(f"label_smoothing applies to dpo and simpo, not to objective {self.objective}")
        if self.objective != "sft" and self.batching in ("padding_free", "packed"):
            problems.append(f"batching={self.batching} is for sft: TRL's preference trainers pad each batch "
                            "(use batching=padded or auto)")
        return problems + self.rl_problems()

    def rl_problems(self) -> list[str]:
        """The grpo settings: rewards given, group sizes that divide the batch, ranges."""
        if self.objective != "grpo":
            given = [f for f in ("reward", "reward_regex", "reward_schema") if getattr(self, f)]
            return [f"{given[0]} is for objective grpo (got objective {self.objective})"] if given else []
        problems = []
        if not self.reward:
            problems.append("objective grpo needs at least one --reward (e.g. --reward exact_match, --reward "
                            "rewards.py:my_reward, --reward models:/my-rm@champion)")
        if self.num_generations < 2:
            problems.append(f"num_generations must be >= 2 (rewards are compared within a group), got "
                            f"{self.num_generations}")
        else:
            problems += self.group_problems()
        if self.max_completion_length < 1:
            problems.append(f"max_completion_length must be >= 1, got {self.max_completion_length}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (GRPO samples), got {self.temperature}")
        if not 0 < self.epsilon < 1:
            problems.append(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.sample_steps < 0:
            problems.append(f"sample_steps must be >= 0 (0 = never), got {self.sample_steps}")
        if self.reward_length_target < 0:
            problems.append(f"reward_length_target must be >= 0, got {self.reward_length_target}")
        return problems

    def group_problems(self) -> list[str]:
        """GRPO samples in rounds of whole prompt groups over every rank (TRL's GRPOConfig: the generation
        batch, batch_size x num_gpus x grad_accum, and with an eval set the eval batch, batch_size x
        num_gpus, must be multiples of num_generations): a round that splits a group fails inside TRL."""
        n, ranks = self.num_generations, self.num_gpus
        steps = _int_or(self.trainer_args.get("steps_per_generation"), self.grad_accum)
        round_size = _int_or(self.trainer_args.get("generation_batch_size"), self.batch_size * ranks * steps)
        problems = []
        if round_size % n:
            per_rank = next(b for b in range(self.batch_size, self.batch_size + n + 1) if (b * ranks * steps) % n == 0)
            divisors = [d for d in range(2, round_size + 1) if round_size % d == 0]
            fix = f"set --num-generations to {' or '.join(map(str, divisors[:4]))}, or " if divisors else "set "
            problems.append(
                f"batch_size x num_gpus x grad_accum = {self.batch_size} x {ranks} x {steps} = {round_size} completions "
                f"per generation round must be a multiple of num_generations={n} (whole groups over the ranks): "
                f"{fix}--batch-size {per_rank} (or change --grad-accum / --num-gpus)")
        eval_n = _int_or(self.trainer_args.get("num_generations_eval"), n)
        if (self.eval_dataset or self.eval_split) and (self.batch_size * ranks) % eval_n:
            per_rank = next(b for b in range(self.batch_size, self.batch_size + eval_n + 1) if (b * ranks) % eval_n == 0)
            problems.append(
                f"with an eval set (eval_dataset / eval_split) the eval batch, batch_size x num_gpus = "
                f"{self.batch_size} x {ranks} = {self.batch_size * ranks} completions, must be a multiple of "
                f"num_generations={eval_n} (whole groups): set --batch-size {per_rank}, or --num-gpus, or drop the "
                "eval set")
        return problems

    @property
    def registers(self) -> bool:
        return self.register_as.lower() != "none"


def field_help(cls: type) -> dict[str, str]:
    import dataclasses

    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _int_or(value, default: int) -> int:
    """``value`` as an int (a trainer_args string), else ``default`` (absent, or not a number: trainer_args
    checks report that)."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------- trainer_args: the rest of SFTConfig

def trainer_keys_set_by(cls: type) -> dict[str, str]:
    """TrainingArguments / SFTConfig setting -> what sets it in Model Garden (``--option`` or a reason)."""
    import dataclasses

    out = {key: f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)
           for key in f.metadata.get("trainer_keys", ())}
    return {**{k: f"({why})" for k, why in SET_BY_MODEL_GARDEN.items()}, **out}


def _settings_class(cfg) -> type:
    import importlib

    module, name = cfg.trainer_args_of
    return getattr(importlib.import_module(module), name)


def _typed_trainer_args(cfg) -> tuple[dict[str, Any], list[str]]:
    if not cfg.trainer_args:
        return {}, []
    import dataclasses

    target = _settings_class(cfg)  # trl / transformers: imported only when trainer_args are given
    label = ".".join(cfg.trainer_args_of)
    hints = typing.get_type_hints(target)
    taken = trainer_keys_set_by(type(cfg))
    known = [f.name for f in dataclasses.fields(target) if f.init and f.name not in taken]
    typed, problems = {}, []
    for key, value in cfg.trainer_args.items():
        where = f"--trainer-arg {key}"
        if key in taken:
            by = taken[key]
            problems.append(f"{where}: Model Garden sets {key} itself {by}" if by.startswith("(") else
                            f"{where}: Model Garden sets {key} from its own option: use {by} (or --set "
                            f"{by[2:].replace('-', '_')}=...) instead of --trainer-arg")
        elif key not in hints or key not in known:
            problems.append(f"{where}: not a setting of {label}{did_you_mean(key, known)}")
        else:
            try:
                typed[key] = coerce_hint(hints[key], value)
            except ValueError as exc:
                problems.append(f"{where}={value!r}: {exc} ({label}.{key})")
    return typed, problems


def trainer_arg_problems(cfg) -> list[str]:
    """Every problem of ``cfg.trainer_args`` against the run's settings class (empty when none given)."""
    return _typed_trainer_args(cfg)[1]


def trainer_args_for(cfg) -> dict[str, Any]:
    """``cfg.trainer_args`` typed as the settings class's fields, for the trainer's arguments."""
    typed, problems = _typed_trainer_args(cfg)
    if problems:
        raise ConfigError(problems, "trainer_args")
    return typed
