"""Run untrusted Python (model-generated MBPP solutions) in a contained child process -- or refuse to.

**Fail closed.** Two levels exist, and only one of them contains untrusted code:

``bwrap`` (the default; *contained*)
    bubblewrap with new namespaces and a read-only view of the system holding the standard library
    only, no ``/proc``, no raw-memory modules (:mod:`.bwrap` builds it). The child never runs as
    root: as root on the host, the bootstrap drops to a fresh unprivileged uid per run
    (``setresuid``, which also makes the process non-dumpable); as a normal user it keeps the
    caller's own non-zero uid. A seccomp filter (:mod:`.seccomp`) refuses ``ptrace``, mounts, new
    namespaces, ``io_uring`` and socket families other than unix/IPv4/IPv6 for every process of the
    run. The network is a private loopback. All descendants die with the pid namespace.
``process`` (explicit opt-in only; *not contained*)
    a plain child process with the same rlimits, a process group that is killed, and a fresh uid
    when running as root and the interpreter is readable to it. It can read and write whatever the
    uid can (the data set's expected values included), reach the network, and (when no uid drop is
    possible) read the evaluator's memory. It is used only when the user asks for it (``eval.sandbox: process`` or
    ``--unsafe-sandbox``), and the level is then printed in the results table and stored in
    metrics.json.

When the ``bwrap`` level cannot be established (bubblewrap missing, no user namespaces, an
interpreter the sandbox uid cannot read), :class:`SandboxUnavailable` says what is missing and how
to get it, in one line. There is no silent fallback.

At both levels: rlimits (address space, data, CPU seconds, file size, process count, open files,
no core dumps), a memory cap for the whole process tree of a run (resident pages plus what its
sockets can queue, polled from the host's ``/proc`` by :mod:`.watch`), a new session whose process group is killed when the run ends (also on success), stdin
at EOF, a minimal environment, stdout/stderr read with a cap (the run is killed beyond it), a
wall-clock timeout. A failure of one run's machinery is that item's ``error``, never the end of the
evaluation.

**Verdict integrity -- can the code fake a pass?** (:meth:`Sandbox.run_checks`). No: the untrusted
process never decides and never holds anything worth stealing. The parent splits each assert
(:mod:`.oracle`): only the calls into the candidate's code run in the sandbox, their values come
back as size-capped plain data, and the comparisons with the expected values run in the parent.
Exiting early, printing "passed", patching builtins, a garbage-collector frame walk, a
subinterpreter, ``ctypes``, tracing hooks, an object whose ``__eq__`` is always true: none of them
reaches an expected value or the comparison. What remains out of scope is what the benchmark's own
definition of correctness allows: hard-coding the expected values that the prompt shows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import marshal
import os
import platform
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..errors import UserError
from .bwrap import SANDBOX_WORKDIR, base_python, bwrap_args, masked_paths
from .oracle import MAX_WIRE_BYTES, decode_values, judge, split_tests
from .sandbox_bootstrap import BOOTSTRAP
from .seccomp import seccomp_program
from .watch import MemoryGuard, PipeReader, kill_group, user_process_count

_LOG = logging.getLogger(__name__)

LEVELS = ("bwrap", "process")
CONTAINED_LEVELS = ("bwrap",)
SANDBOX_UID_BASE = 0x7F000000  # fresh per-run uids (root only) are drawn from [BASE, BASE + SPAN)
SANDBOX_UID_SPAN = 1 << 24
INSTALL_HINT = ("install bubblewrap (apt-get install bubblewrap) and run as root or as a user with "
                "unprivileged user namespaces")
OPT_IN_HINT = "or opt in to the uncontained process level at your own risk (--unsafe-sandbox / eval.sandbox: process)"
_RESULT_CAP = MAX_WIRE_BYTES + 1  # bytes read back from the result pipe: "R", then the values
_GRACE_S = 5.0  # how long to wait for a killed child and its pipes


class SandboxUnavailable(UserError):
    """The contained level cannot run here, and the user did not opt in to an uncontained one."""

    exit_code = 7


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = field(default=10.0, metadata={"help": "Wall-clock limit, seconds; the run is killed after it."})
    memory_mb: int = field(default=1024, metadata={"help": "Address space per process; resident memory plus socket buffers of the run's whole process tree, MiB."})
    cpu_s: int = field(default=10, metadata={"help": "CPU-time limit per process, seconds (SIGXCPU, then SIGKILL)."})
    max_procs: int = field(default=32, metadata={"help": "Processes+threads the sandbox uid may have (RLIMIT_NPROC)."})
    max_output_bytes: int = field(default=64_000, metadata={"help": "Bytes kept per stream; the run is killed beyond it."})
    max_file_bytes: int = field(default=10 * 2**20, metadata={"help": "Largest file the code may write (RLIMIT_FSIZE; process level)."})
    max_open_files: int = field(default=256, metadata={"help": "Open file descriptors per process (RLIMIT_NOFILE)."})


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced. ``status``: passed | failed | timeout | error (the sandbox itself failed)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    detail: str = ""
    message: bytes = b""  # calls mode: the values the run sent back (tagged JSON; see .oracle)
    oracle: str = ""  # checks: "split" (judged in the parent) or "fallback" (not run, counted as failed)


@dataclass(frozen=True)
class SandboxCapabilities:
    """The isolation a :class:`Sandbox` gets on this machine (probed by running the interpreter)."""

    level: str  # "bwrap" | "process"
    contained: bool  # the level contains untrusted code (only bwrap); False = the user opted in
    network_isolated: bool
    filesystem_isolated: bool  # read-only view; home, project, data, host /tmp invisible
    pid_namespace: bool  # every descendant dies with the run; no host /proc
    uid_dropped: bool  # runs as a fresh unprivileged uid (root on the host)
    nproc_enforced: bool  # RLIMIT_NPROC bounds fork bombs
    seccomp: bool
    python: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    level: str
    drop_uid: bool
    masks: tuple[str, ...] = ()
    seccomp: bytes | None = None


# The probe proves the contained level's promises from inside before anything is scored.
_PROBE_CODE = r'''
import collections, json, math, os, re
problems = []
if os.getuid() == 0 or os.geteuid() == 0:
    problems.append("runs as root")
if os.path.exists("/proc/self"):
    problems.append("/proc is visible")
for name in ("_ctypes", "_testcapi"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        problems.append(name + " is importable")
for path in (".", "/tmp", "/dev/shm"):
    try:
        open(os.path.join(path, "probe-write"), "w").close()
    except OSError:
        pass
    else:
        problems.append(path + " is writable")
print("ok" if not problems else "; ".join(problems))
'''
_PROBE_CODE_PROCESS = "import collections, json, math, re\nprint('ok')\n"

_KILL_UID = "import os,sys\nu=int(sys.argv[1])\nos.setgroups([])\nos.setresgid(u,u,u)\nos.setresuid(u,u,u)\nos.kill(-1,9)\n"


class Sandbox:
    """Runs Python source under :class:`SandboxLimits`: contained (``bwrap``) unless the caller opts out.

    ``level="bwrap"`` (default) refuses with :class:`SandboxUnavailable` where containment cannot be
    established; ``level="process"`` is the explicit, uncontained opt-in.
    """

    def __init__(self, limits: SandboxLimits | None = None, python: str | None = None,
                 level: str = "bwrap") -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown sandbox level {level!r}; choose one of {', '.join(LEVELS)}")
        self.limits = limits or SandboxLimits()
        self.python = python or base_python()
        self.level = level
        self._caps: SandboxCapabilities | None = None
        self._plan: _Plan | None = None

    @property
    def capabilities(self) -> SandboxCapabilities:
        """What this machine gives the requested level (probed once per interpreter and level)."""
        return self._probed()[1]

    def _probed(self) -> tuple[_Plan, SandboxCapabilities]:
        if self._plan is None or self._caps is None:
            self._plan, self._caps = _probe(self.python, self.level, shutil.which("bwrap"))
        return self._plan, self._caps

    def run(self, code: str) -> SandboxResult:
        """Execute ``code``; ``passed`` means it exited with status 0 within the limits."""
        return _execute_safely(self._probed()[0], self.python, self.limits, "raw", {"code": code})

    def run_calls(self, code: str, setup: str, calls: list[str] | tuple[str, ...]) -> SandboxResult:
        """Run ``code`` and ``setup``, then evaluate each call expression; the values are in ``message``.

        ``passed`` here only means that the run completed and sent its values; :meth:`run_checks`
        judges them.
        """
        payload = {"code": code, "setup": setup, "calls": list(calls)}
        return _execute_safely(self._probed()[0], self.python, self.limits, "calls", payload)

    def run_checks(self, code: str, checks: str | list[str], setup: str = "") -> SandboxResult:
        """Score ``code`` against ``checks`` (assert statements); ``passed`` only if every assert holds.

        The asserts are split (:mod:`.oracle`): the candidate's calls run in the sandbox, the
        comparisons here. A test that cannot be split is not run and counts as failed (``oracle``
        says ``fallback``).
        """
        split = split_tests([checks] if isinstance(checks, str) else list(checks), setup, code)
        if split.fallback:
            self._probed()  # refuse the same way as a scored run where containment is missing
            return SandboxResult("failed", None, "", "", 0.0, detail=judge(split, []).detail, oracle="fallback")
        run = self.run_calls(code, f"{setup}\n{split.sandbox_imports}", split.calls)
        if run.status != "passed":
            return dataclasses.replace(run, oracle="split")
        try:
            values = decode_values(run.message[1:], len(split.calls))
        except ValueError as exc:
            return dataclasses.replace(run, status="failed", detail=f"results unreadable: {exc}", oracle="split")
        verdict = judge(split, values)
        return dataclasses.replace(run, status="passed" if verdict.passed else "failed", detail=verdict.detail,
                                   oracle="split")


@functools.cache
def _probe(python: str, level: str, bwrap: str | None) -> tuple[_Plan, SandboxCapabilities]:
    """Establish the requested level by running a probe program; refuse (bwrap) or warn (process)."""
    root = os.geteuid() == 0
    limits = SandboxLimits(timeout_s=30.0)
    if level == "bwrap":
        plan = _bwrap_plan(python, bwrap, root)
        res = _execute(plan, python, limits, "raw", {"code": _PROBE_CODE})
        if res.status != "passed" or res.stdout.strip() != "ok":
            why = res.stdout.strip() or (res.stderr.strip().splitlines() or [res.detail])[-1][:200]
            raise SandboxUnavailable(f"model-written code needs a contained sandbox, but bubblewrap does not work "
                                     f"here ({why}); {INSTALL_HINT}, {OPT_IN_HINT}")
        return plan, _caps(plan, python, root, ())
    tried: list[str] = []
    for plan in ([_Plan("process", True), _Plan("process", False)] if root else [_Plan("process", False)]):
        res = _execute(plan, python, limits, "raw", {"code": _PROBE_CODE_PROCESS})
        if res.status == "passed" and res.stdout.strip() == "ok":
            break
        tried.append(f"{'uid drop' if plan.drop_uid else 'same uid'}: "
                     f"{(res.stderr.strip().splitlines() or [res.detail])[-1][:200]}")
    else:
        raise SandboxUnavailable(f"no sandbox can run {python}: {'; '.join(tried)}")
    _LOG.warning("UNSAFE sandbox (opted in): model-written code runs as a plain process%s, with the host file "
                 "system and network reachable; scores are not protected against forged passes",
                 "" if plan.drop_uid else " with the evaluator's own uid")
    return plan, _caps(plan, python, root, tuple(tried))


def _bwrap_plan(python: str, bwrap: str | None, root: bool) -> _Plan:
    if bwrap is None:
        raise SandboxUnavailable(f"model-written code needs a contained sandbox, but bubblewrap is not installed; "
                                 f"{INSTALL_HINT}, {OPT_IN_HINT}")
    program = seccomp_program()
    if program is None:
        raise SandboxUnavailable(f"the sandbox's seccomp filter does not describe this machine ({platform.machine()}); "
                                 f"{OPT_IN_HINT}")
    return _Plan("bwrap", root, masked_paths(python), program)


def _caps(plan: _Plan, python: str, root: bool, notes: tuple[str, ...]) -> SandboxCapabilities:
    contained = plan.level in CONTAINED_LEVELS
    return SandboxCapabilities(
        level=plan.level, contained=contained, network_isolated=contained, filesystem_isolated=contained,
        pid_namespace=contained, uid_dropped=plan.drop_uid, nproc_enforced=plan.drop_uid or not root,
        seccomp=plan.seccomp is not None, python=python, notes=notes)


def _rlimits(limits: SandboxLimits) -> str:
    nproc = limits.max_procs if os.geteuid() == 0 else user_process_count() + limits.max_procs
    values = {
        "RLIMIT_AS": limits.memory_mb * 2**20,
        "RLIMIT_DATA": limits.memory_mb * 2**20,
        "RLIMIT_CPU": max(1, int(limits.cpu_s)),
        "RLIMIT_FSIZE": limits.max_file_bytes,
        "RLIMIT_NOFILE": limits.max_open_files,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": nproc,
    }
    return ",".join(f"{k}={v}" for k, v in values.items())


def _command(plan: _Plan, python: str, limits: SandboxLimits, mode: str, uid: int, workdir: str,
             fds: tuple[int, ...]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one run: isolation wrapper, interpreter flags, bootstrap."""
    if plan.level == "bwrap":
        wrapper = bwrap_args(shutil.which("bwrap") or "bwrap", python, os.geteuid() == 0, plan.masks,
                              fds[2] if len(fds) > 2 else None)
        home = SANDBOX_WORKDIR
    else:
        wrapper, home = [], workdir
    flags = ["-I", "-S", "-u", "-B"]
    argv = [*wrapper, python, *flags, "-c", BOOTSTRAP, str(fds[0]), str(fds[1]), mode, str(uid), _rlimits(limits)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}
    return argv, env


def _execute_safely(plan: _Plan, python: str, limits: SandboxLimits, mode: str, payload: dict) -> SandboxResult:
    """:func:`_execute`, with any failure of the machinery turned into this item's ``error``."""
    try:
        return _execute(plan, python, limits, mode, payload)
    except Exception as exc:  # noqa: BLE001 - one item's failure must not end the evaluation
        return SandboxResult("error", None, "", "", 0.0, detail=f"sandbox failure: {type(exc).__name__}: {exc}"[:300])


def _execute(plan: _Plan, python: str, limits: SandboxLimits, mode: str, payload: dict) -> SandboxResult:
    """One run in a fresh working directory; the child's process group is killed before returning."""
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if plan.drop_uid else -1
    with tempfile.TemporaryDirectory(prefix="promptintern-sandbox-", ignore_cleanup_errors=True) as workdir:
        if uid >= 0 and plan.level == "process":
            os.chown(workdir, uid, uid)
        fd_in_r, fd_in_w = os.pipe()  # payload (code, setup, calls) -> child
        fd_out_r, fd_out_w = os.pipe()  # "R" (started), then the values <- child
        fds = [fd_in_r, fd_out_w]
        if plan.seccomp is not None and plan.level == "bwrap":
            sc_r, sc_w = os.pipe()
            os.write(sc_w, plan.seccomp)  # a few hundred bytes: fits the pipe buffer
            os.close(sc_w)
            fds.append(sc_r)
        argv, env = _command(plan, python, limits, mode, uid, workdir, tuple(fds))
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=tuple(fds), start_new_session=True, cwd=workdir, env=env)
        except OSError as exc:
            for fd in (*fds, fd_in_w, fd_out_r):
                os.close(fd)
            return SandboxResult("error", None, "", str(exc), time.monotonic() - start, detail="could not start")
        for fd in fds:
            os.close(fd)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            kill_group(proc.pid)

        out = PipeReader(os.dup(proc.stdout.fileno()), limits.max_output_bytes, kill)  # type: ignore[union-attr]
        err = PipeReader(os.dup(proc.stderr.fileno()), limits.max_output_bytes, kill)  # type: ignore[union-attr]
        res = PipeReader(fd_out_r, _RESULT_CAP, kill)
        memory = MemoryGuard(proc.pid, limits.memory_mb * 2**20, kill)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        writer = threading.Thread(target=_write_all, args=(fd_in_w, marshal.dumps(payload)), daemon=True)
        for t in (out, err, res, writer, memory):
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = not killed.is_set()
        finally:
            memory.stop.set()
            _reap(proc, python, uid if plan.level == "process" else -1)
        wall = time.monotonic() - start
        for t in (out, err, res, writer, memory):
            t.join(timeout=_GRACE_S)
    result = _classify(proc.returncode, out, err, bytes(res.data), mode, timed_out, wall, res.overflow)
    if memory.exceeded and result.status != "passed":
        return SandboxResult("failed", result.returncode, result.stdout, result.stderr, wall, result.truncated,
                             f"memory limit ({limits.memory_mb} MiB for the whole run)")
    return result


def _reap(proc: subprocess.Popen, python: str, sweep_uid: int) -> None:
    """Kill the run's process group (always: background children must not outlive the run).

    With a pid namespace that takes every descendant; without one, a dropped uid lets us kill
    every process of that uid, which catches children that left the group.
    """
    kill_group(proc.pid)
    try:
        proc.wait(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if sweep_uid >= 0:
        subprocess.run([python, "-I", "-S", "-c", _KILL_UID, str(sweep_uid)], timeout=_GRACE_S,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError:
        pass
    finally:
        os.close(fd)


def _classify(rc: int | None, out: PipeReader, err: PipeReader, result: bytes, mode: str,
              timed_out: bool, wall: float, result_overflow: bool = False) -> SandboxResult:
    stdout = bytes(out.data).decode("utf-8", "replace")
    stderr = bytes(err.data).decode("utf-8", "replace")
    truncated = out.overflow or err.overflow
    cpu_signals = {-signal.SIGXCPU, 128 + signal.SIGXCPU}
    if not result.startswith(b"R"):
        status, detail = ("timeout", "wall-clock limit") if timed_out else ("error", "the sandbox did not start")
    elif timed_out:
        status, detail = "timeout", "wall-clock limit"
    elif truncated:
        status, detail = "failed", "output limit exceeded"
    elif rc in cpu_signals:
        status, detail = "timeout", "CPU-time limit"
    elif result_overflow:
        status, detail = "failed", "results too large"
    elif mode == "calls":
        ok = rc == 0 and len(result) > 1
        status, detail = ("passed", "") if ok else ("failed", "the solution did not run to completion")
    else:
        status, detail = ("passed", "") if rc == 0 else ("failed", f"exit status {rc}")
    return SandboxResult(status, rc, stdout, stderr, wall, truncated, detail, message=result if mode == "calls" else b"")


def sandbox_capabilities(python: str | None = None, level: str = "bwrap") -> SandboxCapabilities:
    """The isolation the sandbox gets here at ``level`` (probed once per interpreter); may raise SandboxUnavailable."""
    return Sandbox(python=python, level=level).capabilities


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    max_procs: int = 32,
    max_output_bytes: int = 64_000,
    max_file_bytes: int = 10 * 2**20,
    level: str = "bwrap",
) -> SandboxResult:
    """Run ``code`` in a fresh sandbox; ``passed`` iff it exits with status 0 within the limits."""
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_procs=max_procs,
                           max_output_bytes=max_output_bytes, max_file_bytes=max_file_bytes)
    return Sandbox(limits, level=level).run(code)


def run_checks(code: str, checks: str | list[str], *, setup: str = "", limits: SandboxLimits | None = None,
               level: str = "bwrap") -> SandboxResult:
    """Score ``code`` (then ``setup``) against ``checks`` (asserts); ``passed`` iff every assert holds (judged here)."""
    return Sandbox(limits, level=level).run_checks(code, checks, setup)
