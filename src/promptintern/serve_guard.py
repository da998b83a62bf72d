"""The gate in front of a served model: routes, API key, request bodies, ``max_tokens`` cap, timeout.

Neither engine's server can be told all of this. ``transformers serve`` has no API key, exposes
``POST /reset`` (unloads the model, after which ``/health`` still says ok) and ``POST /load_model``,
answers a body without ``messages`` with a 500 and a traceback, and accepts any ``max_tokens``;
llama-cpp-python's server has an API key but no cap on ``max_tokens`` and no request timeout.
So both are wrapped in this one ASGI middleware, which is plain code over the ASGI interface
(no FastAPI, no torch) and is tested without a model:

- only the inference routes pass (``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
  ``POST /v1/completions``); everything else, the admin routes included, is 404;
- with an API key, every route but ``/health`` needs ``Authorization: Bearer KEY`` (else 401);
- a POST body must be a JSON object under ``max_body_bytes`` (413), with a non-empty ``messages``
  list of objects with a string ``role`` (chat) or a ``prompt`` (completions), and a positive whole
  ``max_tokens`` when given (else 400, one line, no traceback);
- ``max_tokens`` (and ``max_completion_tokens``) is clamped to the cap, and set to it when absent,
  so a request cannot hold a generation slot for an unbounded answer;
- engine-specific ``defaults`` fill fields a request leaves out (llama-cpp-python's server applies a
  repetition penalty of 1.1 unless told otherwise, which the OpenAI API does not have: the
  llama.cpp engine sets ``repeat_penalty`` 1.0, so greedy answers equal ``infer``'s);
- a request that has not started its answer within ``timeout_s`` gets 504 and is cancelled.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES = {("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class BadRequest(Exception):
    """A request the gate answers itself: (status, one-line message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GuardSettings:
    """What the gate enforces (see the module docstring)."""

    max_tokens: int
    api_key: str | None = None
    timeout_s: float = 300.0
    max_body_bytes: int = 1 << 20
    answer_health: bool = False  # answer GET /health here, for an engine without one (it loads before it listens)
    defaults: tuple[tuple[str, Any], ...] = ()  # body fields set when a request leaves them out


def check_body(path: str, raw: bytes, max_tokens: int, defaults: tuple[tuple[str, Any], ...] = ()) -> bytes:
    """The request body to pass on (``max_tokens`` capped), or :class:`BadRequest` (400)."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(400, f"the request body must be a JSON object, got {type(body).__name__}")
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest(400, "'messages' must be a non-empty list of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise BadRequest(400, f"messages[{i}] must be an object with a string 'role'")
            if not isinstance(m.get("content"), (str, list, type(None))):
                raise BadRequest(400, f"messages[{i}].content must be a string or a list of parts")
    elif not isinstance(body.get("prompt"), (str, list)):
        raise BadRequest(400, "'prompt' must be a string or a list")
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(400, f"'{name}' must be a whole number >= 1, got {value!r}")
        if value > max_tokens:
            body[name] = max_tokens
    if all(body.get(name) is None for name in TOKEN_FIELDS):
        body["max_tokens"] = max_tokens
    for name, value in defaults:
        body.setdefault(name, value)
    return json.dumps(body).encode()


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else None
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    payload = {"status": "ok"} if status == 200 else {"error": {"message": message, "code": status}}
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "the client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def guarded(app: App, settings: GuardSettings) -> App:
    """``app`` behind the gate described in the module docstring."""

    async def gate(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the engine's startup and shutdown
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        try:
            if (method, path) not in ROUTES:
                raise BadRequest(404, f"{method} {path} is not served")
            if settings.api_key and path != "/health":
                given = _bearer(scope)
                if given is None or not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                    raise BadRequest(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
            if method == "POST":
                body = check_body(path, await _read_body(receive, settings.max_body_bytes), settings.max_tokens,
                                  settings.defaults)
                receive = _replay(body, receive)
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                         + [(b"content-length", str(len(body)).encode())]}
        except BadRequest as exc:
            await _answer(send, exc.status, str(exc))
            return
        if path == "/health" and settings.answer_health:
            await _answer(send, 200, "ok")
            return
        await _with_timeout(app, scope, receive, send, settings.timeout_s)

    return gate


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then waits on the real one (for the disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _with_timeout(app: App, scope: Scope, receive: Receive, send: Send, timeout_s: float) -> None:
    """Run the request; 504 (and cancel it) when no answer has started within ``timeout_s``."""
    started = asyncio.Event()

    async def tracking_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.set()
        await send(message)

    task = asyncio.ensure_future(app(scope, receive, tracking_send))
    waiter = asyncio.ensure_future(started.wait())
    try:
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            task.cancel()
            await _answer(send, 504, f"no answer within the server's request timeout ({timeout_s:g} s)")
            return
        await task
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
