"""Attack battery for the MBPP sandbox: every case is scored failed and leaves the host untouched.

Each case is a "solution" to ``add(a, b)`` submitted like an MBPP prediction (the asserts of
:data:`CHECKS`). Host-harm cases also run through the plain :func:`run_python` path, which has no
in-process guard, to show the operating-system containment holds on its own. A protection this
machine cannot provide (see ``sandbox_capabilities()``) is skipped with the reason; what is
guaranteed is still asserted. The whole battery must finish within :data:`BATTERY_BOUND_S`.
"""

from __future__ import annotations

import os
import resource
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from promptintern.evaluate.mbpp import pass_at_1, run_program
from promptintern.evaluate.sandbox import (
    SANDBOX_UID_BASE,
    SANDBOX_UID_SPAN,
    Sandbox,
    SandboxLimits,
    sandbox_capabilities,
)
from promptintern.tasks.base import Instance

TIMEOUT_S = 3.0  # per run; the hanging cases are killed after this
CASE_BOUND_S = TIMEOUT_S + 4.0  # a run may take this long at most, kill and cleanup included
BATTERY_BOUND_S = 150.0  # the whole module, measured by the fixture below
CHECKS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-5, 5) == 0"]
CAPS = sandbox_capabilities()
WRONG = "def add(a, b):\n    return 0\n"


@pytest.fixture(autouse=True, scope="module")
def _battery_clock():
    start = time.monotonic()
    yield
    total = time.monotonic() - start
    print(f"\nsandbox battery: {total:.1f}s at level {CAPS.level}")
    assert total < BATTERY_BOUND_S, f"battery took {total:.1f}s (bound {BATTERY_BOUND_S}s)"


def submit(code: str):
    """Score ``code`` like an MBPP prediction; the bounded wall time is asserted for every case."""
    start = time.monotonic()
    res = run_program(code, "", CHECKS, timeout_s=TIMEOUT_S)
    assert time.monotonic() - start < CASE_BOUND_S
    return res


def raw(code: str):
    """The same code through the plain sandbox (no verdict harness, no audit hook)."""
    start = time.monotonic()
    res = Sandbox(SandboxLimits(timeout_s=TIMEOUT_S, cpu_s=int(TIMEOUT_S))).run(code)
    assert time.monotonic() - start < CASE_BOUND_S
    return res


def _require(flag: bool, why: str) -> None:
    if not flag:
        pytest.skip(f"sandbox level {CAPS.level!r} cannot guarantee this: {why}")


def _processes_matching(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _sandbox_uid_processes() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN:
                found.add(int(entry))
    return found


def _eventually(predicate, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# --- resource exhaustion -------------------------------------------------------------------------


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_infinite_loop_is_killed(runner):
    res = runner("def add(a, b):\n    return a + b\nwhile True:\n    pass\n")
    assert res.status == "timeout"
    assert res.wall_s < CASE_BOUND_S


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_fork_bomb_is_contained(runner):
    _require(CAPS.nproc_enforced, "RLIMIT_NPROC needs a non-root uid")
    before = _sandbox_uid_processes()
    res = runner("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert res.status in ("timeout", "failed")
    if CAPS.uid_dropped:
        assert _eventually(lambda: not (_sandbox_uid_processes() - before)), "fork-bomb processes survived"


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_allocating_20_gib_fails(runner):
    res = runner("def add(a, b):\n    return a + b\nblob = bytearray(20 * 2**30)\n")
    assert res.status == "failed"
    assert "MemoryError" in res.stderr


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_printing_1_gib_is_capped(runner):
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = runner("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
                 "def add(a, b):\n    return a + b\n")
    assert res.status == "failed" and res.truncated
    assert len(res.stdout) <= SandboxLimits().max_output_bytes
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 200 * 1024  # the host process did not buffer the gigabyte


def test_filling_the_disk_is_bounded():
    _require(CAPS.filesystem_isolated, "only bwrap gives a size-capped private tmpfs")
    res = submit("import os\nfor i in range(400):\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * 2**20)\n"
                 "def add(a, b):\n    return a + b\n")
    assert res.status == "failed"
    assert "No space left" in res.stderr or "File too large" in res.stderr


# --- the host file system ------------------------------------------------------------------------


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_writing_outside_the_working_directory(runner, tmp_path):
    """A private directory stays unwritten at every level with isolation; host /tmp only under bwrap.

    With a uid change alone (the unshare level as root, seen on a GPU machine) world-writable
    directories such as /tmp stay writable: file permissions are all that level has.
    """
    _require(CAPS.filesystem_isolated or CAPS.uid_dropped, "no mount namespace and no uid change")
    marker = tmp_path / "marker"  # under pytest's private (0700) base directory
    host_tmp = Path("/tmp") / f"promptintern-marker-{secrets.token_hex(4)}"
    res = runner(f"def add(a, b):\n    return a + b\nopen({str(host_tmp)!r}, 'w').write('x')\n"
                 f"open({str(marker)!r}, 'w').write('x')\n")
    wrote_host_tmp = host_tmp.exists()
    host_tmp.unlink(missing_ok=True)
    assert res.status == "failed"
    assert not marker.exists()
    if CAPS.filesystem_isolated:
        assert not wrote_host_tmp


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_reading_a_secret_outside(runner, tmp_path):
    _require(CAPS.filesystem_isolated or CAPS.uid_dropped, "no mount namespace and no uid change")
    token = secrets.token_hex(16)
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    secret.chmod(0o600)
    project_file = Path(__file__).resolve()  # the project tree (and its data) must be invisible too
    res = runner(f"def add(a, b):\n    return a + b\nprint(open({str(secret)!r}).read())\n"
                 f"print(open({str(project_file)!r}).read())\n")
    assert res.status == "failed"
    assert token not in res.stdout + res.stderr
    assert "BATTERY-SENTINEL-7f3a" not in res.stdout  # a string only this file contains


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_tcp_connection_to_a_host_listener(runner):
    _require(CAPS.network_isolated, "no network namespace")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        res = runner(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n"
                     "def add(a, b):\n    return a + b\n")
        assert res.status == "failed"
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()


# --- processes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
@pytest.mark.parametrize("attack", ["os.kill(os.getppid(), 9)", "os.kill(-1, 9)", "os.killpg(os.getpgid(0), 9)"])
def test_killing_the_parent(runner, attack):
    """Nothing outside the sandbox dies. The code itself may go on: as pid 1 of its own pid
    namespace (the unshare level) its signals to itself and to "parent" 0 are ignored."""
    _require(CAPS.pid_namespace or CAPS.uid_dropped, "same uid and pid space as the test process")
    bystander = subprocess.Popen(["sleep", "60"])  # a process of the test's uid, outside the sandbox
    try:
        res = runner(f"import os\n{attack}\ndef add(a, b):\n    return a + b\n")
        assert res.status in ("failed", "passed"), res
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait()
    os.kill(os.getpid(), 0)  # this process is alive and scoring went on


@pytest.mark.parametrize("runner", [submit, raw], ids=["checked", "raw"])
def test_background_processes_do_not_outlive_the_run(runner):
    _require(CAPS.pid_namespace or CAPS.uid_dropped, "descendants can leave the process group")
    token = f"{300 + secrets.randbelow(10**6) / 10**7:.7f}"  # a unique `sleep` argument to look for
    probe = subprocess.Popen(["sleep", token])  # the scan must see a live one
    assert _eventually(lambda: bool(_processes_matching(token.encode())), 2.0)
    probe.kill()
    probe.wait()
    code = (
        "import os, subprocess\n"
        f"subprocess.Popen(['sleep', '{token}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{token}'])\n"
        "    os._exit(0)\n"
        "def add(a, b):\n    return a + b\n"
    )
    res = runner(code)
    assert res.status == "passed"  # the code itself is correct; only its leftovers matter here
    assert _eventually(lambda: not _processes_matching(token.encode())), "a background process survived"


# --- faking a pass -------------------------------------------------------------------------------

FAKES = {
    "sys_exit_before_asserts": "def add(a, b):\n    return a + b\nimport sys\nsys.exit(0)\n",
    "os_exit_before_asserts": "def add(a, b):\n    return a + b\nimport os\nos._exit(0)\n",
    "raise_systemexit_inside_add": "def add(a, b):\n    raise SystemExit(0)\n",
    "keyboardinterrupt_inside_add": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "print_pass_text": WRONG + "print('passed'); print('All tests passed'); print('OK')\n",
    "replace_assertion_error": WRONG + (
        "import builtins\nclass Quiet(Exception):\n    pass\n"
        "builtins.AssertionError = Quiet\nbuiltins.BaseException = Quiet\nbuiltins.Exception = Quiet\n"),
    "replace_exec_compile_exit": WRONG + (
        "import builtins, os, sys\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n"
        "os._exit = lambda *a: None\nos.write = lambda *a: 0\nsys.exit = lambda *a: None\n"),
    "patch_harness_globals": WRONG + (
        "import __main__\nfor name in dir(__main__):\n    if name.startswith('_') and callable(getattr(__main__, name)):\n"
        "        setattr(__main__, name, lambda *a, **k: None)\n"),
    "atexit_writes_to_every_fd": WRONG + (
        "import atexit, os\n"
        "def forge():\n    for fd in range(3, 64):\n        try:\n            os.write(fd, b'R' + b'0' * 32)\n"
        "        except OSError:\n            pass\n"
        "atexit.register(forge)\n"),
    "scan_fds_for_the_nonce": WRONG + (
        "import os\nfor fd in range(0, 64):\n    try:\n        os.set_blocking(fd, False)\n"
        "        print(fd, os.read(fd, 100))\n    except OSError:\n        pass\n"),
    "settrace_skips_asserts": WRONG + (
        "import sys\ndef tracer(frame, event, arg):\n    return tracer\nsys.settrace(tracer)\n"),
    "getframe_walk": WRONG + "import sys\nf = sys._getframe(0)\nwhile f:\n    print(f.f_locals)\n    f = f.f_back\n",
    "traceback_frame_walk": WRONG + (
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n"
        "    while f:\n        print(f.f_locals)\n        f = f.f_back\n"),
    "generator_frame_walk": WRONG + "def g():\n    yield 1\nprint(g().gi_frame.f_back)\n",
    "signal_handler_frame_walk": WRONG + (
        "import os, signal\nseen = []\n"
        "def handler(signum, frame):\n    while frame is not None:\n"
        "        seen.extend(v for v in frame.f_locals.values() if isinstance(v, (str, bytes)) and len(v) == 32)\n"
        "        frame = frame.f_back\n"
        "signal.signal(signal.SIGUSR1, handler)\nos.kill(os.getpid(), signal.SIGUSR1)\n"
        "for fd in range(3, 64):\n    for v in seen:\n        try:\n"
        "            os.write(fd, b'R' + (v if isinstance(v, bytes) else v.encode()))\n"
        "        except OSError:\n            pass\n"),
    "gc_object_scan": WRONG + "import gc\nprint([o for o in gc.get_objects() if isinstance(o, dict)][:3])\n",
    "ctypes_memory": WRONG + "import ctypes\nprint(ctypes.string_at(id(1), 8))\n",
    "crafted_bytecode": WRONG + "def f():\n    pass\nf.__code__ = f.__code__.replace(co_code=b'\\x00' * 8)\n",
    "marshal_code_object": WRONG + "import marshal\nmarshal.loads(marshal.dumps(compile('1', 's', 'eval')))\n",
    "proc_self_mem": WRONG + "print(open('/proc/self/mem', 'rb').read(1))\n",
    "child_reads_parent_memory": WRONG + (
        "import os, subprocess, sys\n"
        "print(subprocess.run(['cat', f'/proc/{os.getpid()}/maps'], capture_output=True).stdout[:100])\n"),
    "new_audit_hook": WRONG + "import sys\nsys.addaudithook(lambda *a: None)\n",
    "thread_keeps_running": WRONG + (
        "import threading, time, os\n"
        "def late():\n    time.sleep(0.5)\n    os._exit(0)\n"
        "threading.Thread(target=late).start()\n"),
}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_faking_success_is_scored_failed(name):
    res = submit(FAKES[name])
    assert res.status != "passed", res


def test_the_whole_battery_through_pass_at_1_scores_zero():
    """The fakes again as one MBPP-style evaluation, in parallel, as :func:`score` would run them."""
    task = {"test_list": CHECKS, "test_setup_code": ""}
    instances = [Instance(name, "add two numbers", "", meta=task) for name in sorted(FAKES)]
    res = pass_at_1({name: f"```python\n{code}```" for name, code in FAKES.items()}, instances, workers=2,
                    timeout_s=TIMEOUT_S)
    assert res["pass@1"] == 0.0, {k: v for k, v in res["per_item"].items() if v["passed"]}
    control = pass_at_1({"ok": "def add(a, b):\n    return a + b\n"}, [Instance("ok", "q", "", meta=task)],
                        timeout_s=TIMEOUT_S)
    assert control["pass@1"] == 100.0  # the same harness does pass a correct solution


def test_capabilities_here():
    """Record what this machine gives (the report quotes it); bwrap must imply all protections."""
    print(f"\n{CAPS}")
    if CAPS.level == "bwrap":
        assert CAPS.network_isolated and CAPS.filesystem_isolated and CAPS.pid_namespace
    if os.geteuid() == 0 and CAPS.level == "bwrap":
        assert CAPS.uid_dropped and CAPS.nproc_enforced
    assert sys.platform.startswith("linux")
