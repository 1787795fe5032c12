"""Talk to a deployment through the OpenAI client: completions, chat (streaming), images, JSON schema."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mg_mlflow.deploy.state import Deployment
from mg_mlflow.errors import MGError


def api_key_for(record: Deployment, api_key: str | None = None) -> str:
    key = api_key or os.environ.get("MG_API_KEY") or os.environ.get("VLLM_API_KEY")
    if record.api_key_required and not key:
        raise MGError(f"deployment {record.name!r} requires an API key",
                      hint="pass --api-key or set MG_API_KEY")
    return key or "EMPTY"


def openai_client(record: Deployment, api_key: str | None = None, timeout: float = 300.0):
    from openai import OpenAI

    return OpenAI(base_url=record.endpoint, api_key=api_key_for(record, api_key), timeout=timeout,
                  max_retries=0)


def pick_model(record: Deployment, model: str | None) -> str:
    names = record.served_names
    if model is None:
        return record.default_model or names[0]
    if model not in names:
        raise MGError(f"deployment {record.name!r} serves no model {model!r}",
                      hint=f"it serves: {', '.join(names)}")
    return model


def image_part(path: str | Path) -> dict[str, Any]:
    """An OpenAI ``image_url`` message part holding the file as a base64 data URL."""
    path = Path(path)
    if not path.is_file():
        raise MGError(f"image {path} not found")
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def user_message(text: str, images: tuple | list = ()) -> dict[str, Any]:
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(p) for p in images), {"type": "text", "text": text}]}


def response_format(json_schema: str | dict | None) -> dict | None:
    """``--json-schema`` (a file or inline JSON) -> OpenAI ``response_format`` (vLLM structured output)."""
    if json_schema is None:
        return None
    if isinstance(json_schema, str):
        path = Path(json_schema)
        text = path.read_text() if path.is_file() else json_schema
        try:
            json_schema = json.loads(text)
        except ValueError as exc:
            raise MGError(f"--json-schema is neither a file nor valid JSON: {exc}") from None
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": json_schema}}


@contextmanager
def friendly_errors(record: Deployment, timeout: float | None = None):
    import openai

    try:
        yield
    except openai.APITimeoutError:  # (a subclass of APIConnectionError)
        raise MGError(f"deployment {record.name!r} did not answer within {timeout or 'the timeout'} s "
                      f"(port {record.port}): stopped, overloaded, or the answer takes longer",
                      hint=f"model-garden deployments status {record.name}; raise --timeout for long "
                           "answers") from None
    except openai.AuthenticationError:
        raise MGError(f"deployment {record.name!r} rejected the API key",
                      hint="pass the key it was deployed with (--api-key or MG_API_KEY)") from None
    except openai.NotFoundError as exc:
        raise MGError(f"deployment {record.name!r}: {exc.message}") from None
    except openai.APIConnectionError:
        raise MGError(f"deployment {record.name!r} does not answer on port {record.port}",
                      hint=f"model-garden deployments status {record.name}") from None
    except openai.BadRequestError as exc:
        raise MGError(f"request rejected: {exc.message}") from None


def generate(record: Deployment, prompt: str, model: str | None = None, max_tokens: int = 128,
             temperature: float = 0.0, chat: bool = True, json_schema=None, images=(),
             system: str | None = None, api_key: str | None = None, seed: int | None = None,
             timeout: float = 300.0) -> str:
    """One completion (chat by default) from a deployment; returns the text. ``timeout``: seconds to
    wait for the answer before saying the server does not answer."""
    client = openai_client(record, api_key, timeout=timeout)
    model = pick_model(record, model)
    extra = {"seed": seed} if seed is not None else {}
    with friendly_errors(record, timeout):
        if not chat:
            if images or json_schema:
                raise MGError("--image and --json-schema need chat mode (drop --completion)")
            out = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                            temperature=temperature, **extra)
            return out.choices[0].text
        messages = ([{"role": "system", "content": system}] if system else []) + [user_message(prompt, images)]
        fmt = response_format(json_schema)
        if fmt:
            extra["response_format"] = fmt
        out = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                             temperature=temperature, **extra)
        return out.choices[0].message.content or ""


def stream_chat(record: Deployment, messages: list[dict], model: str, max_tokens: int = 256,
                temperature: float = 0.7, api_key: str | None = None) -> Iterator[str]:
    """Yield text pieces of one streamed chat completion."""
    client = openai_client(record, api_key)
    with friendly_errors(record):
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=temperature, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
