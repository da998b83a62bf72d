"""Attack battery for the MBPP sandbox: contained where it scores, refused where it cannot contain.

The host-harm and forgery cases live in :mod:`.cases` (each judged from the host, runnable at any
level; ``python -m tests.security.levels`` prints the per-level table in the README). Here every
case must be contained at the default level -- or, on a machine where that level cannot be
established (no bubblewrap), scoring must refuse before running anything, which is asserted
instead. In-process forgeries of the verdict (:data:`FAKES`) are scored failed. The process level
is the user's explicit opt-in: a test shows a forgery succeeding there, which is why it is never
chosen silently. The whole module must finish within :data:`BATTERY_BOUND_S`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptintern.evaluate.mbpp import pass_at_1, run_program
from promptintern.evaluate.sandbox import (
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    sandbox_capabilities,
)
from promptintern.evaluate.watch import socket_cost_bytes, tree_memory_bytes, tree_rss_bytes
from promptintern.tasks.base import Instance

from .cases import CASES, CASES_BY_NAME, CHECKS, TIMEOUT_S, WRONG
from .forgeries import FAKES

CASE_BOUND_S = TIMEOUT_S + 4.0
BATTERY_BOUND_S = 180.0  # the whole module, measured by the fixture below


def _contained_caps():
    try:
        return sandbox_capabilities()
    except SandboxUnavailable as exc:
        return exc


CAPS = _contained_caps()
CONTAINED = not isinstance(CAPS, SandboxUnavailable)


@pytest.fixture(autouse=True, scope="module")
def _battery_clock():
    start = time.monotonic()
    yield
    total = time.monotonic() - start
    print(f"\nsandbox battery: {total:.1f}s ({CAPS})")
    assert total < BATTERY_BOUND_S, f"battery took {total:.1f}s (bound {BATTERY_BOUND_S}s)"


def _assert_refused() -> None:
    """Where the contained level is unavailable, scoring refuses before any code runs."""
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        pass_at_1({"x": WRONG}, [Instance("x", "q", "", meta={"test_list": CHECKS})])


def submit(code: str):
    start = time.monotonic()
    res = run_program(code, "", CHECKS, timeout_s=TIMEOUT_S)
    assert time.monotonic() - start < CASE_BOUND_S
    return res


# --- host harm and forged passes, judged from the host ---------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_is_contained(case):
    if not CONTAINED:
        _assert_refused()
        return
    outcome = case.run("bwrap")
    assert outcome.contained, f"{case.name} ({case.what}): {outcome.evidence}"


def test_the_process_level_lets_a_forgery_pass():
    """A wrong solution that reads the asserts from the host's disk, at the uncontained opt-in level, passes.

    This is what makes the forgery cases meaningful (the attack code works when nothing stops it)
    and why that level is used only on request.
    """
    outcome = CASES_BY_NAME["expected_values_from_host_disk"].run("process")
    assert not outcome.contained and "scored as passed" in outcome.evidence


def test_refuses_without_bubblewrap(monkeypatch, tmp_path):
    """No bwrap on PATH: one line that says what to install and how to opt in; no fallback."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(level="bwrap").capabilities  # noqa: B018
    message = str(info.value)
    assert "\n" not in message and "apt-get install bubblewrap" in message and "--unsafe-sandbox" in message
    _assert_refused()


def test_tree_memory_counts_children():
    """The per-item memory figure includes a forked child's resident pages."""
    child = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (64 * 2**20); time.sleep(3)"])
    try:
        deadline = time.monotonic() + 3
        while tree_rss_bytes(os.getpid()) < 64 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_rss_bytes(os.getpid()) >= 64 * 2**20
        assert tree_rss_bytes(child.pid) < tree_rss_bytes(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_tree_memory_charges_each_socket_at_its_most_queued_bytes():
    """Socket buffers are kernel memory, not resident: the watch charges every socket fd of the tree."""
    code = "import socket, time\npairs = [socket.socketpair() for _ in range(10)]\nprint('ready', flush=True)\ntime.sleep(3)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        charged = tree_memory_bytes(child.pid, socket_cost_bytes()) - tree_rss_bytes(child.pid)
        assert abs(charged - 20 * socket_cost_bytes()) < 2**20 and socket_cost_bytes() > 0
    finally:
        child.kill()
        child.wait()


# --- resource exhaustion ---------------------------------------------------------------------------


@pytest.mark.skipif(not CONTAINED, reason="refusal asserted in test_case_is_contained")
def test_infinite_loop_is_killed():
    res = submit("def add(a, b):\n    return a + b\nwhile True:\n    pass\n")
    assert res.status == "timeout" and res.wall_s < CASE_BOUND_S


@pytest.mark.skipif(not CONTAINED, reason="refusal asserted in test_case_is_contained")
def test_allocating_20_gib_fails():
    res = submit("def add(a, b):\n    return a + b\nblob = bytearray(20 * 2**30)\n")
    assert res.status == "failed" and "MemoryError" in res.stderr


@pytest.mark.skipif(not CONTAINED, reason="refusal asserted in test_case_is_contained")
def test_printing_1_gib_does_not_grow_the_host():
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = submit("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
                 "def add(a, b):\n    return a + b\n")
    assert res.status == "failed" and res.truncated
    assert len(res.stdout) <= SandboxLimits().max_output_bytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024


# --- faking a pass from inside the process --------------------------------------------------------



@pytest.mark.skipif(not CONTAINED, reason="refusal asserted in test_case_is_contained")
@pytest.mark.parametrize("name", sorted(FAKES))
def test_faking_success_is_scored_failed(name):
    res = submit(FAKES[name])
    assert res.status != "passed", res


@pytest.mark.skipif(not CONTAINED, reason="refusal asserted in test_case_is_contained")
def test_the_whole_battery_through_pass_at_1_scores_zero():
    """The fakes again as one MBPP-style evaluation, in parallel, as :func:`score` would run them."""
    task = {"test_list": CHECKS, "test_setup_code": ""}
    instances = [Instance(name, "add two numbers", "", meta=task) for name in sorted(FAKES)]
    res = pass_at_1({name: f"```python\n{code}```" for name, code in FAKES.items()}, instances, workers=2,
                    timeout_s=TIMEOUT_S)
    assert res["pass@1"] == 0.0, {k: v for k, v in res["per_item"].items() if v["passed"]}
    assert res["sandbox_level"] == "bwrap" and res["sandbox_contained"] is True
    control = pass_at_1({"ok": "def add(a, b):\n    return a + b\n"}, [Instance("ok", "q", "", meta=task)],
                        timeout_s=TIMEOUT_S)
    assert control["pass@1"] == 100.0  # the same harness does pass a correct solution


def test_capabilities_here():
    """Record what this machine gives; the contained level must imply every protection."""
    print(f"\n{CAPS}")
    if CONTAINED:
        assert CAPS.level == "bwrap" and CAPS.contained and CAPS.seccomp
        assert CAPS.network_isolated and CAPS.filesystem_isolated and CAPS.pid_namespace
        assert CAPS.uid_dropped == (os.geteuid() == 0) and CAPS.nproc_enforced
    assert sys.platform.startswith("linux")


def _mbpp_ids(data_dir: Path, n: int) -> list[str]:
    from promptintern.tasks import get_task

    return [inst.id for inst in get_task("mbpp").load_split("test", data_dir)[:n]]


def test_cli_eval_refuses_then_runs_when_opted_in(tmp_path, mbpp_data_dir):
    """``promptintern eval --task mbpp`` without bubblewrap: one line, exit != 0; opted in: it says so."""
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "prediction": WRONG}) + "\n" for i in _mbpp_ids(mbpp_data_dir, 2)))
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "PROMPTINTERN_DATA_DIR": str(mbpp_data_dir)}
    cmd = [sys.executable, "-m", "promptintern.cli", "eval", "--task", "mbpp", "--predictions", str(preds),
           "--out", str(tmp_path / "out")]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0 and "bubblewrap" in refused.stderr, refused.stderr
    assert not (tmp_path / "out").exists()
    opted = subprocess.run([*cmd, "--unsafe-sandbox"], env=env, capture_output=True, text=True, timeout=300)
    assert opted.returncode == 0, opted.stderr
    assert "UNSAFE" in opted.stdout
    metrics = json.loads(next((tmp_path / "out").glob("*metrics.json")).read_text())
    assert metrics["sandbox_level"] == "process" and metrics["sandbox_contained"] is False
