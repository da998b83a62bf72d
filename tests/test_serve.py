"""``promptintern serve`` end to end: a real server, the openai client, raw queries, same answers as infer.

The server (``transformers serve`` in a ``promptintern serve`` subprocess) takes ~8 s to start
on one CPU thread, mostly imports (torch, transformers, FastAPI); it is always stopped by
:func:`running_server`, which kills it if SIGTERM did not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptintern.errors import RunDirError
from promptintern.exporter import export
from promptintern.io import read_jsonl
from promptintern.models import MARKER
from promptintern.serve import free_loopback_port, is_healthy, serve_command

pytest.importorskip("openai")
pytest.importorskip("fastapi")

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_fixtures import served_tiny_run  # noqa: E402

QUERIES = ["How many employees are there?", "List every department in Berlin", "Which projects have no staff?"]
NEW_TOKENS = 6
MAX_TOKENS_CAP = NEW_TOKENS  # the run's infer.max_new_tokens, recorded in the export (serving.json)
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def sql_run(tmp_path_factory) -> Path:
    """A tiny promptintern run (SQL task) on a local copy of tiny-random, plus its infer answers."""
    return served_tiny_run(tmp_path_factory.mktemp("serve"), QUERIES, NEW_TOKENS, batch_size=2)


@contextlib.contextmanager
def running_server(target: Path, cache: Path, log: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``promptintern serve target`` on a free loopback port; yields (process, base URL); always stopped."""
    env = {**os.environ, "PROMPTINTERN_CACHE": str(cache), "OMP_NUM_THREADS": "4", "HF_HUB_OFFLINE": "1"}
    try:
        with serve_command(["--threads", "1", "serve", str(target), *extra], log, env=env,
                           start_timeout_s=START_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S) as running:
            yield running
    except RuntimeError as exc:
        pytest.fail(str(exc))


def test_served_raw_queries_answer_like_infer(sql_run, tmp_path, monkeypatch):
    from openai import OpenAI

    expected = {r["id"]: r for r in read_jsonl(sql_run.parent / "infer.jsonl")}
    assert any(r["prediction"] for r in expected.values()), "the tiny model should say something"
    log = tmp_path / "serve.log"
    with running_server(sql_run, tmp_path / "cache", log, "--api-key", "k3y") as (proc, url):
        client = OpenAI(base_url=url, api_key="k3y", max_retries=0, timeout=60)
        assert f"ready: {url}" in log.read_text()  # printed once the port answers
        assert_hardened(proc, url)
        model_id = client.models.list().data[0].id
        for i, query in enumerate(QUERIES):
            reply = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": query}],
                                                   max_tokens=NEW_TOKENS, temperature=0)
            assert reply.choices[0].message.content.strip() == expected[f"q{i}"]["prediction"]
            assert reply.usage.prompt_tokens == expected[f"q{i}"]["input_tokens"]  # the served prompt, token for token
        stopped_at = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STOP_TIMEOUT_S) == 0
    text = log.read_text()
    assert f"at {url}" in text and "server stopped" in text
    # the run's merged export was cached by the server; resolving the run again reuses it
    from promptintern.serve import resolve_served_dir

    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path / "cache"))
    served = resolve_served_dir(sql_run)
    assert served.parent.parent == tmp_path / "cache" / "serve" and str(served) == model_id
    assert (served.parent / MARKER).stat().st_mtime < stopped_at


def _post(url: str, body: bytes, key: str | None = "k3y") -> int:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def assert_hardened(proc: subprocess.Popen, url: str) -> None:
    """The key is required, admin routes are closed, bad bodies are 400, max_tokens is capped, threads reach
    the model process."""
    import openai
    import psutil

    root = url.removesuffix("/v1")
    with pytest.raises(openai.AuthenticationError):
        OpenAI = openai.OpenAI
        OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}])
    assert _post(root + "/reset", b"{}") == 404 and is_healthy(root + "/health")
    for body in (b'{"model": "m"}', b'{"messages": null}', b'"text"'):
        assert _post(url + "/chat/completions", body) == 400
    reply = openai.OpenAI(base_url=url, api_key="k3y", max_retries=0).chat.completions.create(
        model=openai.OpenAI(base_url=url, api_key="k3y").models.list().data[0].id,
        messages=[{"role": "user", "content": "x"}], max_tokens=100_000_000, temperature=0)
    assert reply.usage.completion_tokens <= MAX_TOKENS_CAP
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert len(tree) >= 2  # the worker and transformers serve's model process
    assert all(p.environ().get("OMP_NUM_THREADS") == "1" for p in tree)  # --threads 1, not the caller's 4


def test_serve_refuses_an_adapter_export_and_other_directories(sql_run, tmp_path):
    from promptintern.serve import resolve_served_dir

    adapter = export(sql_run, tmp_path / "adapter")
    with pytest.raises(RunDirError, match="adapter export"):
        resolve_served_dir(adapter)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="neither"):
        resolve_served_dir(tmp_path / "empty")
    merged = export(sql_run, tmp_path / "merged", merge=True)
    assert resolve_served_dir(merged) == merged.resolve()


def test_serve_refuses_a_busy_port_before_loading_anything():
    from promptintern.errors import UserError
    from promptintern.serve import check_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            check_port("127.0.0.1", busy.getsockname()[1])
    check_port("127.0.0.1", free_loopback_port())
