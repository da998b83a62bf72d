"""The serving gate (routes, API key, bodies, max_tokens cap, timeout) and the supervisor's checks.

The gate is plain ASGI, so it is driven here directly with an engine stand-in that echoes the
body it received; the real engines behind it are exercised in test_serve.py and test_gguf.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from promptintern.cli import main
from promptintern.serve_guard import GuardSettings, guarded


async def _echo(scope, receive, send):
    if scope["path"] == "/slow":
        await asyncio.sleep(10)
    message = await receive() if scope["method"] == "POST" else {"body": b"{}"}
    body = message.get("body", b"")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def call(app, method: str, path: str, body: bytes | None = None, key: str | None = None) -> tuple[int, dict]:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    sent: list[dict] = []
    chunks = [body or b""]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": False} if chunks else \
            {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    asyncio.run(app(scope, receive, send))
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(payload or b"{}")


def chat(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.fixture
def app():
    return guarded(_echo, GuardSettings(max_tokens=16, api_key="s3cret", timeout_s=0.5))


def test_admin_and_unknown_routes_are_closed(app):
    for method, path in (("POST", "/reset"), ("POST", "/load_model"), ("POST", "/v1/responses"), ("GET", "/docs")):
        assert call(app, method, path, b"{}", key="s3cret")[0] == 404


def test_api_key_is_required_except_for_health(app):
    assert call(app, "POST", "/v1/chat/completions", chat())[0] == 401
    assert call(app, "POST", "/v1/chat/completions", chat(), key="wrong")[0] == 401
    assert call(app, "GET", "/v1/models")[0] == 401
    assert call(app, "GET", "/health")[0] == 200
    assert call(app, "POST", "/v1/chat/completions", chat(), key="s3cret")[0] == 200


@pytest.mark.parametrize("body", [b'{"model": "m"}', b'{"messages": null}', b'{"messages": "hi"}', b"[]",
                                  b'"text"', b"not json", b"", b'{"messages": []}', b'{"messages": [3]}',
                                  chat(max_tokens=0), chat(max_tokens="9"), chat(max_tokens=True),
                                  chat(max_completion_tokens=-5)])
def test_bad_bodies_are_400_with_one_line(app, body):
    status, payload = call(app, "POST", "/v1/chat/completions", body, key="s3cret")
    assert status == 400 and "\n" not in payload["error"]["message"]


def test_max_tokens_is_capped_and_set_when_absent(app):
    assert call(app, "POST", "/v1/chat/completions", chat(max_tokens=100_000_000), key="s3cret")[1]["max_tokens"] == 16
    assert call(app, "POST", "/v1/chat/completions", chat(max_completion_tokens=99), key="s3cret")[1][
        "max_completion_tokens"] == 16
    assert call(app, "POST", "/v1/chat/completions", chat(), key="s3cret")[1]["max_tokens"] == 16
    assert call(app, "POST", "/v1/chat/completions", chat(max_tokens=3), key="s3cret")[1]["max_tokens"] == 3
    assert call(app, "POST", "/v1/completions", b'{"prompt": "x", "max_tokens": 50}', key="s3cret")[1][
        "max_tokens"] == 16


def test_engine_defaults_fill_only_what_the_request_leaves_out():
    app = guarded(_echo, GuardSettings(max_tokens=4, defaults=(("repeat_penalty", 1.0),)))
    assert call(app, "POST", "/v1/chat/completions", chat())[1]["repeat_penalty"] == 1.0
    assert call(app, "POST", "/v1/chat/completions", chat(repeat_penalty=1.3))[1]["repeat_penalty"] == 1.3


def test_oversized_body_is_413():
    app = guarded(_echo, GuardSettings(max_tokens=4, max_body_bytes=100))
    assert call(app, "POST", "/v1/chat/completions", chat(pad="x" * 200))[0] == 413


def test_a_request_without_an_answer_in_time_gets_504():
    from promptintern import serve_guard

    routes = serve_guard.ROUTES | {("GET", "/slow")}
    app = guarded(_echo, GuardSettings(max_tokens=4, timeout_s=0.3))
    try:
        serve_guard.ROUTES = routes
        started = time.monotonic()
        assert call(app, "GET", "/slow")[0] == 504
        assert time.monotonic() - started < 5
    finally:
        serve_guard.ROUTES = routes - {("GET", "/slow")}


@pytest.mark.parametrize("argv, message", [
    (["--port", "99999"], "--port 99999: a TCP port is between 1 and 65535"),
    (["--port", "-1"], "--port -1: a TCP port"),
    (["--device", "bogus"], "--device 'bogus': expected cpu"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid': cannot resolve it"),
    (["--host", "0.0.0.0"], "is not a loopback address"),
    (["--engine", "vllm"], "--engine 'vllm': choose one of transformers, llama.cpp"),
    (["--max-tokens", "0"], "--max-tokens 0: must be >= 1"),
    (["--timeout", "0"], "--timeout 0: must be > 0"),
])
def test_serve_mistakes_are_one_line(argv, message, tmp_path, capsys):
    assert main(["serve", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_export_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err
    assert "no such directory" in err and err.count("\n") == 1


def test_non_loopback_bind_with_a_key_passes_the_checks():
    from promptintern.serve import ServeArgs, check_args, free_loopback_port

    assert check_args(ServeArgs(host="0.0.0.0", port=free_loopback_port(), api_key="k")) is False
    assert check_args(ServeArgs(host="localhost", port=free_loopback_port())) is True


def test_worker_env_carries_threads_and_key_only_when_given():
    from promptintern.serve import worker_env

    env = worker_env(3, None, {"PROMPTINTERN_API_KEY": "stale", "OMP_NUM_THREADS": "8"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["PROMPTINTERN_THREADS"] == "3"
    assert "PROMPTINTERN_API_KEY" not in env
    assert worker_env(1, "k", {})["PROMPTINTERN_API_KEY"] == "k"


def test_stop_group_kills_a_worker_that_ignores_sigterm_and_its_child():
    """A worker stuck in a generation (SIGTERM ignored) and its model process end within the grace."""
    from promptintern.serve import stop_group

    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); print(c.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    started = time.monotonic()
    assert stop_group(proc, grace_s=1.0) == -signal.SIGKILL
    assert time.monotonic() - started < 10
    for _ in range(50):  # the orphaned child is reaped by init; wait until it is gone
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the worker's child survived")
