"""The ``mlflow.pyfunc`` face of a Model Garden vision-language model (adapter or merged).

MLflow's transformers flavor cannot log image-text-to-text models (mlflow #16252), so a vision model
is logged as a pyfunc whose artifact ``model_dir`` is an ordinary Hugging Face folder (adapter or
merged model + tokenizer + image processor + ``mg_model.json``)::

    m = mlflow.pyfunc.load_model("models:/tiny-vl-lora/1")
    m.predict(pd.DataFrame({"image": ["shape.png"], "question": ["What colour is the shape?"]}))
    # -> ["red"]

``image`` is a file path, a ``file://`` URI, or base64 image data (plain or a data URI).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc

from mg_mlflow.data.vision_processor import generate_answer
from mg_mlflow.errors import MGError
from mg_mlflow.registry.loader import load_vision_dir

GEN_PARAMS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}
EXTRA_REQUIREMENTS = ("pillow",)


def _rows(model_input: Any) -> list[tuple[Any, str]]:
    import pandas as pd

    if isinstance(model_input, dict):
        model_input = pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in model_input.items()})
    elif isinstance(model_input, list):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        raise MGError("vision model input needs an 'image' column (path or base64) and a 'question' column")
    qcol = next((c for c in ("question", "prompt", "text") if c in model_input.columns), None)
    if qcol is None:
        raise MGError("vision model input needs a 'question' column next to 'image'")
    rows = []
    for image, question in zip(model_input["image"].tolist(), model_input[qcol].tolist()):
        if isinstance(image, (list, tuple)) or hasattr(image, "tolist") and not isinstance(image, (str, bytes)):
            # MLflow's schema enforcement turns {"image": [...], "question": [...]} into one row of lists
            images, questions = list(image), list(question) if not isinstance(question, str) else [question]
            if len(questions) == 1:
                questions = questions * len(images)
            rows += [(i, str(q)) for i, q in zip(images, questions)]
        else:
            rows.append((image, str(question)))
    return rows


class VisionModel(mlflow.pyfunc.PythonModel):
    """Answers a question about an image with the model stored under ``artifacts["model_dir"]``."""

    # The explicit signature (signature()) validates inputs and params; MLflow would otherwise wrap
    # predict for type-hint validation and warn that it has none (mlflow/pyfunc/model.py,
    # PythonModel.__init_subclass__, which skips classes that set this).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.processor = load_vision_dir(context.artifacts["model_dir"])

    def answer(self, image, question: str, params: dict | None = None) -> str:
        p = {**GEN_PARAMS, **(params or {})}
        return generate_answer(self.model, self.processor, image, question, int(p["max_new_tokens"]),
                               float(p["temperature"]), float(p["top_p"]))

    def predict(self, context, model_input, params: dict | None = None):
        return [self.answer(image, question, params) for image, question in _rows(model_input)]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "question")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", GEN_PARAMS["max_new_tokens"]),
                            ParamSpec("temperature", "double", GEN_PARAMS["temperature"]),
                            ParamSpec("top_p", "double", GEN_PARAMS["top_p"])]),
    )
