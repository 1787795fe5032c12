"""The ``mlflow.pyfunc`` face of a Model Garden text model (adapter or merged).

``mlflow.pyfunc.load_model("models:/NAME/N").predict(["Hello"], params={"max_new_tokens": 16})``
returns one generated string per prompt. Prompts are wrapped in the tokenizer's chat template as a
user turn unless ``params={"chat": False}``. A reward model (:class:`RewardModel`) instead returns one
score per text: ``predict(["<conversation as the chat template writes it>", ...])``.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from mg_mlflow.registry.loader import load_model_dir, load_reward_dir, reward_scores

GEN_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "chat": True}


def _prompts(model_input: Any) -> list[str]:
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[col].tolist()]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", next(iter(model_input.values())))
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(x) for x in model_input]


class TextModel(mlflow.pyfunc.PythonModel):
    """Generates text with the model stored under ``artifacts["model_dir"]``."""

    # The explicit signature (signature()) validates inputs and params; MLflow would otherwise wrap
    # predict for type-hint validation and warn that it has none (mlflow/pyfunc/model.py,
    # PythonModel.__init_subclass__, which skips classes that set this).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.tokenizer = load_model_dir(context.artifacts["model_dir"])

    def generate(self, prompts: list[str], params: dict | None = None) -> list[str]:
        import torch

        p = {**GEN_PARAMS, **(params or {})}
        tok = self.tokenizer
        texts = []
        for prompt in prompts:
            if p["chat"] and tok.chat_template:
                prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            texts.append(prompt)
        outputs = []
        for text in texts:  # one at a time: no padding side effects on tiny or odd tokenizers
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            greedy = float(p["temperature"]) <= 0
            kwargs = dict(max_new_tokens=int(p["max_new_tokens"]), do_sample=not greedy,
                          pad_token_id=tok.pad_token_id or tok.eos_token_id)
            if not greedy:
                kwargs.update(temperature=float(p["temperature"]), top_p=float(p["top_p"]))
            with torch.no_grad():
                out = self.model.generate(**enc.to(self.model.device), **kwargs)
            outputs.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return outputs

    def predict(self, context, model_input, params: dict | None = None):
        return self.generate(_prompts(model_input), params)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # a list of prompts (or a one-column frame)
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec("max_new_tokens", "long", GEN_PARAMS["max_new_tokens"]),
            ParamSpec("temperature", "double", GEN_PARAMS["temperature"]),
            ParamSpec("top_p", "double", GEN_PARAMS["top_p"]),
            ParamSpec("chat", "boolean", GEN_PARAMS["chat"]),
        ]),
    )


class RewardModel(mlflow.pyfunc.PythonModel):
    """Scores texts with the reward model (one logit, sequence classification) under ``artifacts["model_dir"]``."""

    _skip_type_hint_validation = True  # as TextModel: no type-hint wrapper, no warning at import

    def load_context(self, context):
        self.model, self.tokenizer = load_reward_dir(context.artifacts["model_dir"])

    def predict(self, context, model_input, params: dict | None = None):
        return reward_scores(self.model, self.tokenizer, _prompts(model_input))


def reward_signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("double")]))
