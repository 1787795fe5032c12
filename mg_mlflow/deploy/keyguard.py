"""The API key on every route of a vLLM server, loaded by vLLM itself (``--middleware
mg_mlflow.deploy.keyguard.RequireKey``).

vLLM's own ``--api-key`` guards the paths under ``/v1``, ``/v2``, ``/inference`` and ``/cohere``
only; ``/invocations``, ``/tokenize``, ``/metrics``, ``/openapi.json`` and any route a later vLLM
adds answer without it. This middleware refuses every HTTP request and websocket of the server
without ``Authorization: Bearer <key>``, except ``/health`` (supervisors and load balancers probe
it) and CORS preflights (``OPTIONS``: a browser sends them without credentials; they return no
data). The key is read from ``VLLM_API_KEY``, the variable Model Garden passes it in; without it
every route but ``/health`` is refused (a guard configured without a key fails closed).

The standard library only: vLLM imports this module inside its own process, possibly from another
environment.
"""

from __future__ import annotations

import hashlib
import hmac
import os

OPEN_PATHS = frozenset({"/health"})
MIDDLEWARE = "mg_mlflow.deploy.keyguard.RequireKey"
_BODY = b'{"error": "Unauthorized: this deployment needs Authorization: Bearer <its API key>"}'


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class RequireKey:
    """Pure ASGI middleware: 401 without the deployment's key on every route but ``/health``."""

    def __init__(self, app) -> None:
        self.app = app
        key = os.environ.get("VLLM_API_KEY", "")
        self._key = _digest(key) if key else None

    def allowed(self, scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path in OPEN_PATHS or (scope["type"] == "http" and scope.get("method") == "OPTIONS"):
            return True
        if self._key is None:
            return False
        value = ""
        for name, raw in scope.get("headers", []):
            if name.lower() == b"authorization":
                value = raw.decode("latin-1")
                break
        scheme, _, token = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(_digest(token.strip()), self._key)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "Unauthorized"})
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_BODY)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": _BODY})
