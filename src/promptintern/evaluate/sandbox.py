"""Run untrusted Python (model-generated MBPP solutions) in a contained child process.

Generated code is only ever executed here. Two questions are answered separately:

**Containment -- can the code harm the host?** Enforced by the operating system, never by Python.
The strongest level that works on this machine is probed once (see :func:`sandbox_capabilities`):

``bwrap``
    bubblewrap (0.8+; Debian 12 package ``bubblewrap``): new mount, pid, network, ipc and uts
    namespaces. The sandbox sees only the system directories (``/usr``, ``/etc``, ``/bin``,
    ``/lib*``, ``/sbin``, read-only) and the interpreter's prefix; home directories, the project,
    the data and the caller's ``/tmp`` do not exist inside. The only writable place is a size-capped
    tmpfs working directory; the network is a private loopback; there is no ``/proc``. All
    descendants die with the pid namespace.
``unshare``
    util-linux ``unshare``: network and pid namespaces (no network; every descendant dies with the
    namespace) but the host file system, protected only by the unprivileged uid below
    (world-writable directories such as ``/tmp`` stay writable).
``process``
    a plain child process: rlimits, its own process group, the unprivileged uid where possible.

At every level: rlimits (address space, data, CPU seconds, file size, process count, open files,
no core dumps), a new session whose process group is killed when the run ends (also on success),
stdin at EOF, a minimal environment, stdout/stderr read with a cap (the run is killed beyond it),
a wall-clock timeout, a throwaway working directory. Running as root (the CI case), the child
drops to a fresh unprivileged uid per run: ``RLIMIT_NPROC`` is not enforced for root, and root
ignores file permissions. Without root the uid cannot change; ``RLIMIT_NPROC`` then counts all the
user's processes, so it is set to their current number plus ``max_procs``.

**Verdict integrity -- can the code fake a pass?** (:meth:`Sandbox.run_checks`). The pass decision
is made by the parent and needs a 128-bit random nonce, sent to the child over an inherited pipe
and written back on another only after the checks ran to completion. Inside the child a
*guardian* thread reads the nonce before any untrusted code exists, keeps it in a local variable of
its own frame, runs the asserts (compiled before the untrusted code runs) with a builtins snapshot
taken before it, and writes the nonce only if ``exec`` of the asserts returned normally; every
other path ends in ``os._exit(1)``. The solution runs in the main thread. Threat model:

* prevented: exiting early (``sys.exit``, ``os._exit``, signals, killing the parent), printing a
  "pass" text (output is never parsed), catching or replacing ``AssertionError`` (``assert`` raises
  the real class), patching builtins or harness functions (the guardian holds its own references
  and a builtins snapshot; an unmatched ``except`` still ends in ``os._exit(1)``), ``atexit``
  hooks, writing guesses to inherited fds (exact match required), forking helpers.
* reading the nonce is blocked: it never reaches the main thread (so signal handlers, which get
  main-thread frames, find nothing); an audit hook installed before
  the solution refuses frame access (``sys._getframe``, ``sys._current_frames``, ``tb_frame``,
  ``gi_frame``/``cr_frame``/``ag_frame``), tracing/profiling (which could also skip asserts),
  ``gc`` object graphs, ``ctypes``, new audit hooks (CPython then skips them silently), building
  code objects (``code.__new__``, ``marshal.loads``; imports compile from source through
  ``-X pycache_prefix``), and opening ``/proc``;
  the process is non-dumpable (uid change, else ``prctl``), so other processes cannot read its
  memory, and at the ``bwrap`` level there is no ``/proc`` at all.
* cost: in checked runs, solutions cannot print tracebacks (``tb_frame``) or import ``asyncio``
  (it builds code objects); stdlib imports compile from source (about 0.1 s per heavy module).
* out of scope: results that really make the assert expressions true -- an object whose ``__eq__``
  always returns True, hard-coding the expected values, patching a module the asserts use. These
  defeat the benchmark's own definition of correctness, not this harness. CPython has no
  in-process memory safety: an exploit of an interpreter bug could still read the nonce. Neither
  affects containment, which does not rely on anything inside the child.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

_LOG = logging.getLogger(__name__)

LEVELS = ("bwrap", "unshare", "process")
SANDBOX_WORKDIR = "/tmp/sandbox"  # the working directory inside a bwrap sandbox
SANDBOX_UID_BASE = 0x7F000000  # fresh per-run uids (root only) are drawn from [BASE, BASE + SPAN)
SANDBOX_UID_SPAN = 1 << 24
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_RESULT_CAP = 256  # bytes read back from the result pipe
_GRACE_S = 5.0  # how long to wait for a killed child and its pipes


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = field(default=10.0, metadata={"help": "Wall-clock limit, seconds; the run is killed after it."})
    memory_mb: int = field(default=1024, metadata={"help": "Address-space (and data) limit per process, MiB."})
    cpu_s: int = field(default=10, metadata={"help": "CPU-time limit per process, seconds (SIGXCPU, then SIGKILL)."})
    max_procs: int = field(default=32, metadata={"help": "Processes+threads the sandbox uid may have (RLIMIT_NPROC)."})
    max_output_bytes: int = field(default=64_000, metadata={"help": "Bytes kept per stream; the run is killed beyond it."})
    max_file_bytes: int = field(default=10 * 2**20, metadata={"help": "Largest file the code may write (RLIMIT_FSIZE)."})
    max_disk_bytes: int = field(default=64 * 2**20, metadata={"help": "Size of the writable tmpfs (bwrap level)."})
    max_open_files: int = field(default=256, metadata={"help": "Open file descriptors per process (RLIMIT_NOFILE)."})


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced. ``status``: passed | failed | timeout | error (the sandbox never started)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    detail: str = ""


@dataclass(frozen=True)
class SandboxCapabilities:
    """The isolation a :class:`Sandbox` gets on this machine (probed by running the interpreter)."""

    level: str  # "bwrap" | "unshare" | "process"
    network_isolated: bool
    filesystem_isolated: bool  # only a private tmpfs is writable; home, project, data, /tmp invisible
    pid_namespace: bool  # every descendant dies with the run
    uid_dropped: bool  # runs as a fresh unprivileged uid (only possible as root)
    nproc_enforced: bool  # RLIMIT_NPROC bounds fork bombs
    python: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Plan:
    level: str
    drop_uid: bool


# ---------------------------------------------------------------------------------------------
# Code that runs inside the sandbox. It is trusted: it runs before any untrusted code exists.
# argv: fd_in fd_out mode uid(-1 = keep) rlimits("NAME=V,...") dumpable_via_prctl(0|1)
# ---------------------------------------------------------------------------------------------
_BOOTSTRAP = r'''
import _thread, builtins, marshal, os, resource, sys, types


def _setup():
    for item in sys.argv[5].split(","):
        name, value = item.split("=")
        hard = int(value) + 1 if name == "RLIMIT_CPU" else int(value)
        resource.setrlimit(getattr(resource, name), (int(value), hard))
    uid = int(sys.argv[4])
    if uid >= 0:  # root: drop to a fresh uid; the credential change also makes us non-dumpable
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid):
            os.write(2, b"sandbox: could not drop privileges\n")
            os._exit(125)
    elif sys.argv[6] == "1":  # same uid as the parent: forbid other processes to read our memory
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
            os.write(2, b"sandbox: prctl(PR_SET_DUMPABLE) failed\n")
            os._exit(125)
        del sys.modules["ctypes"]
    os.umask(0o077)


def _read_payload(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return marshal.loads(b"".join(chunks))


def _describe(exc, where):
    lines = []
    tb = exc.__traceback__
    while tb is not None:
        lines.append(tb.tb_lineno)
        tb = tb.tb_next
    try:
        text = str(exc)
    except BaseException:
        text = "?"
    return "%s: %s: %s (line %s)\n" % (where, type(exc).__name__, text[:500], lines[-1] if len(lines) > 1 else "?")


def _install_audit_hook():
    stat, fsdecode = os.stat, os.fsdecode
    try:
        proc_dev = os.stat("/proc").st_dev if os.path.isdir("/proc/self") else None
    except OSError:
        proc_dev = None
    refused = frozenset((
        "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
        "sys.addaudithook", "sys.monitoring.register_callback", "gc.get_objects", "gc.get_referrers",
        "gc.get_referents", "code.__new__", "marshal.loads", "marshal.load", "sys.remote_exec",
    ))
    frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame"))

    class SandboxRefused(PermissionError):
        pass

    class FrameRefused(ValueError):  # ValueError: namedtuple, enum, typing, logging fall back on it
        pass

    def hook(event, args):
        if event == "sys._getframe":
            raise FrameRefused("frame access is disabled in the sandbox")
        if event in refused or event.startswith("ctypes."):
            raise SandboxRefused(event + " is disabled in the sandbox")
        if event == "object.__getattr__" and args[1] in frame_attrs:
            raise SandboxRefused(args[1] + " is disabled in the sandbox")
        if event == "import" and args[0].split(".")[0] in ("ctypes", "_ctypes"):
            raise SandboxRefused("ctypes is disabled in the sandbox")
        if event == "open" and proc_dev is not None and isinstance(args[0], (str, bytes)):
            try:
                dev = stat(fsdecode(args[0])).st_dev
            except (OSError, ValueError):
                return
            if dev == proc_dev:
                raise SandboxRefused("/proc is not readable in the sandbox")

    sys.addaudithook(hook)


def _guardian(fd_in, fd_out, box, ready, go):
    # Everything used after the untrusted code starts is bound here, before it exists.
    write, close, exit_, exec_, compile_, describe = os.write, os.close, os._exit, exec, compile, _describe
    try:
        payload = _read_payload(fd_in)
        nonce = payload["nonce"].encode("ascii")
        write(fd_out, b"R")
        pristine = dict(builtins.__dict__)
        ns = {"__name__": "__main__", "__builtins__": builtins}
        try:
            code = compile_(payload["code"], "<solution>", "exec")
            setup = compile_(payload["setup"], "<setup>", "exec")
            checks = compile_(payload["checks"], "<checks>", "exec")
        except BaseException as exc:
            write(2, describe(exc, "compile").encode("utf-8", "replace"))
            exit_(1)
        payload = None
        box.extend((code, setup, ns))
        ready.release()
        go.acquire()
        ns["__builtins__"] = pristine
        try:
            exec_(checks, ns)
        except BaseException as exc:
            write(2, describe(exc, "checks").encode("utf-8", "replace"))
            exit_(1)
        else:
            write(fd_out, nonce)
            exit_(0)
    finally:
        exit_(1)


def _main_checked(fd_in, fd_out):
    exit_, describe, write = os._exit, _describe, os.write
    box = []
    ready, go, never = _thread.allocate_lock(), _thread.allocate_lock(), _thread.allocate_lock()
    ready.acquire()
    go.acquire()
    never.acquire()
    _thread.start_new_thread(_guardian, (fd_in, fd_out, box, ready, go))
    ready.acquire()  # the guardian holds the nonce and the compiled code; nothing untrusted has run
    _install_audit_hook()
    code, setup, ns = box
    box.clear()
    try:
        exec(code, ns)
        exec(setup, ns)
    except BaseException as exc:
        write(2, describe(exc, "solution").encode("utf-8", "replace"))
        exit_(1)
    go.release()
    never.acquire()  # the guardian ends the process


def _main_raw(fd_in, fd_out):
    code = _read_payload(fd_in)["code"]
    os.write(fd_out, b"R")
    os.close(fd_out)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(code, "<sandbox>", "exec"), ns)


_setup()
if sys.argv[3] == "checks":
    _main_checked(int(sys.argv[1]), int(sys.argv[2]))
else:
    _main_raw(int(sys.argv[1]), int(sys.argv[2]))
'''

_PROBE_CODE = "import collections, json, math, re\nprint('ok')\n"

_KILL_UID = "import os,sys\nu=int(sys.argv[1])\nos.setgroups([])\nos.setresgid(u,u,u)\nos.setresuid(u,u,u)\nos.kill(-1,9)\n"


def _base_python() -> str:
    """The real interpreter behind this (possibly virtual-env) Python."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def _python_roots(python: str) -> list[str]:
    """Directories the interpreter needs inside a bwrap sandbox: its prefix and its binary's folder."""
    if _base_python() == python:
        roots = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)]
    else:  # another interpreter: assume the usual <prefix>/bin/python layout
        roots = [os.path.dirname(os.path.dirname(python))]
    roots.append(os.path.dirname(python))
    return sorted({r for r in roots if not any(r == s or r.startswith(s + "/") for s in ("/usr", "/bin", "/lib"))})


def _user_process_count() -> int:
    uid, n = os.getuid(), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if entry.isdigit():
            with contextlib.suppress(OSError):
                n += os.stat(f"/proc/{entry}").st_uid == uid
    return n


def _bwrap_args(bwrap: str, python: str, root: bool, limits: SandboxLimits) -> list[str]:
    args = [bwrap, "--die-with-parent", "--new-session"]
    if root:  # privileged: keep only what the bootstrap needs to drop to the sandbox uid
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-all"]
    present = {"/"}
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
        else:
            continue
        present.add(d)
    for r in _python_roots(python):
        parts = r.strip("/").split("/")
        for i in range(1, len(parts)):
            anc = "/" + "/".join(parts[:i])
            if anc not in present:
                args += ["--perms", "0755", "--dir", anc]
                present.add(anc)
        args += ["--ro-bind", r, r]
    args += ["--dev", "/dev", "--perms", "0755", "--size", "65536", "--tmpfs", "/tmp",
             "--perms", "0777", "--size", str(limits.max_disk_bytes), "--tmpfs", SANDBOX_WORKDIR,
             "--remount-ro", "/tmp", "--chdir", SANDBOX_WORKDIR,
             "--setenv", "HOME", SANDBOX_WORKDIR, "--setenv", "TMPDIR", SANDBOX_WORKDIR, "--"]
    return args


def _unshare_args(unshare: str, root: bool) -> list[str]:
    args = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if not root:
        args[1:1] = ["--user", "--map-root-user"]
    return args + ["--"]


class Sandbox:
    """Runs Python source under :class:`SandboxLimits` at the strongest available isolation level."""

    def __init__(self, limits: SandboxLimits | None = None, python: str | None = None,
                 level: str | None = None) -> None:
        if level is not None and level not in LEVELS:
            raise ValueError(f"unknown sandbox level {level!r}; choose one of {', '.join(LEVELS)}")
        self.limits = limits or SandboxLimits()
        self.python = python or _base_python()
        self.level = level  # None: the strongest that works; a name: at most that strong (for tests)
        self._caps: SandboxCapabilities | None = None
        self._plan: _Plan | None = None

    @property
    def capabilities(self) -> SandboxCapabilities:
        """What this machine allows (probed once per interpreter and level, then kept on this object)."""
        return self._probed()[1]

    def _probed(self) -> tuple[_Plan, SandboxCapabilities]:
        if self._plan is None or self._caps is None:
            self._plan, self._caps = _probe(self.python, self.level)
        return self._plan, self._caps

    def run(self, code: str) -> SandboxResult:
        """Execute ``code``; ``passed`` means it exited with status 0 within the limits."""
        return _execute(self._probed()[0], self.python, self.limits, "raw", {"code": code})

    def run_checks(self, code: str, checks: str, setup: str = "") -> SandboxResult:
        """Execute ``code``, then ``setup``, then ``checks``; ``passed`` only if the checks completed.

        The decision rests on the nonce protocol described in the module docstring, not on the exit
        status or the output.
        """
        nonce = secrets.token_hex(16)
        payload = {"code": code, "setup": setup, "checks": checks, "nonce": nonce}
        return _execute(self._probed()[0], self.python, self.limits, "checks", payload, expect=b"R" + nonce.encode())


def _candidates(root: bool, level: str | None) -> list[_Plan]:
    if root:
        plans = [_Plan("bwrap", True), _Plan("unshare", True), _Plan("process", True),
                 _Plan("unshare", False), _Plan("process", False)]
    else:
        plans = [_Plan("bwrap", False), _Plan("unshare", False), _Plan("process", False)]
    floor = LEVELS.index(level) if level is not None else 0
    return [p for p in plans if LEVELS.index(p.level) >= floor]


@functools.cache
def _probe(python: str, level: str | None = None) -> tuple[_Plan, SandboxCapabilities]:
    """Try each isolation plan, strongest first, by running a tiny program; keep the first that works."""
    root = os.geteuid() == 0
    limits = SandboxLimits(timeout_s=30.0)
    tried: list[str] = []
    for plan in _candidates(root, level):
        tool = {"bwrap": shutil.which("bwrap"), "unshare": shutil.which("unshare"), "process": "-"}[plan.level]
        if tool is None:
            tried.append(f"{plan.level}: not installed")
            continue
        res = _execute(plan, python, limits, "raw", {"code": _PROBE_CODE})
        if res.status == "passed" and res.stdout.strip() == "ok":
            break
        why = (res.stderr.strip().splitlines() or [res.detail])[-1][:200]
        tried.append(f"{plan.level}{' + uid drop' if plan.drop_uid else ''}: {why}")
    else:
        raise RuntimeError(f"no sandbox level can run {python}: {'; '.join(tried)}")
    caps = SandboxCapabilities(
        level=plan.level,
        network_isolated=plan.level != "process",
        filesystem_isolated=plan.level == "bwrap",
        pid_namespace=plan.level != "process",
        uid_dropped=plan.drop_uid,
        nproc_enforced=plan.drop_uid or not root,
        python=python,
        notes=tuple(tried),
    )
    if plan.level != "bwrap":
        _LOG.warning(
            "sandbox level %r (stronger levels unavailable: %s): %sthe host file system is protected only by "
            "file permissions (/tmp stays writable; install bubblewrap)", plan.level, "; ".join(tried) or f"{level!r} requested",
            "" if caps.network_isolated else "no network namespace, ",
        )
    if not caps.nproc_enforced:
        _LOG.warning("sandbox runs as root without a uid change: RLIMIT_NPROC is ignored, fork bombs are bounded "
                     "only by the timeout")
    return plan, caps


def _rlimits(limits: SandboxLimits) -> str:
    nproc = limits.max_procs if os.geteuid() == 0 else _user_process_count() + limits.max_procs
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


class _Reader(threading.Thread):
    """Drain a pipe, keeping at most ``cap`` bytes; call ``on_overflow`` once beyond it."""

    def __init__(self, fd: int, cap: int, on_overflow=None) -> None:
        super().__init__(daemon=True)
        self.fd, self.cap, self.on_overflow = fd, cap, on_overflow
        self.data = bytearray()
        self.overflow = False

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return
                room = self.cap - len(self.data)
                if len(chunk) > room:
                    self.data += chunk[: max(room, 0)]
                    if not self.overflow:
                        self.overflow = True
                        if self.on_overflow is not None:
                            self.on_overflow()
                else:
                    self.data += chunk
        except OSError:
            return
        finally:
            os.close(self.fd)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _command(plan: _Plan, python: str, limits: SandboxLimits, mode: str, uid: int, workdir: str,
             fds: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one run: isolation wrapper, interpreter flags, bootstrap."""
    if plan.level == "bwrap":
        wrapper = _bwrap_args(shutil.which("bwrap") or "bwrap", python, os.geteuid() == 0, limits)
        home = SANDBOX_WORKDIR
    else:
        wrapper = _unshare_args(shutil.which("unshare") or "unshare", os.geteuid() == 0) if plan.level == "unshare" else []
        home = workdir
    flags = ["-I", "-S", "-u"]
    if mode == "checks":  # no .pyc loading, so marshal.loads can be refused (see the threat model)
        flags += ["-B", "-X", "pycache_prefix=/nonexistent/pycache"]
    argv = [*wrapper, python, *flags, "-c", _BOOTSTRAP, str(fds[0]), str(fds[1]), mode, str(uid),
            _rlimits(limits), "1" if (uid < 0 and mode == "checks") else "0"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}
    return argv, env


def _execute(plan: _Plan, python: str, limits: SandboxLimits, mode: str, payload: dict[str, str],
             expect: bytes | None = None) -> SandboxResult:
    """One run in a fresh working directory; the child's process group is killed before returning."""
    uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN) if plan.drop_uid else -1
    with tempfile.TemporaryDirectory(prefix="promptintern-sandbox-") as workdir:
        if uid >= 0 and plan.level != "bwrap":
            os.chown(workdir, uid, uid)
        fd_in_r, fd_in_w = os.pipe()  # payload (code, nonce) -> child
        fd_out_r, fd_out_w = os.pipe()  # "R" (started), then the nonce <- child
        argv, env = _command(plan, python, limits, mode, uid, workdir, (fd_in_r, fd_out_w))
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(fd_in_r, fd_out_w), start_new_session=True, cwd=workdir, env=env)
        except OSError as exc:
            for fd in (fd_in_r, fd_in_w, fd_out_r, fd_out_w):
                os.close(fd)
            return SandboxResult("error", None, "", str(exc), time.monotonic() - start, detail="could not start")
        os.close(fd_in_r)
        os.close(fd_out_w)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            _kill_group(proc.pid)

        out = _Reader(os.dup(proc.stdout.fileno()), limits.max_output_bytes, kill)  # type: ignore[union-attr]
        err = _Reader(os.dup(proc.stderr.fileno()), limits.max_output_bytes, kill)  # type: ignore[union-attr]
        res = _Reader(fd_out_r, _RESULT_CAP)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        writer = threading.Thread(target=_write_all, args=(fd_in_w, marshal.dumps(payload)), daemon=True)
        for t in (out, err, res, writer):
            t.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = not killed.is_set()
        finally:
            _reap(proc, python, uid if plan.level == "process" else -1)
        wall = time.monotonic() - start
        for t in (out, err, res, writer):
            t.join(timeout=_GRACE_S)
    return _classify(proc.returncode, out, err, bytes(res.data), expect, timed_out, wall)


def _reap(proc: subprocess.Popen, python: str, sweep_uid: int) -> None:
    """Kill the run's process group (always: background children must not outlive the run).

    With a pid namespace that takes every descendant; without one, a dropped uid lets us kill
    every process of that uid, which catches children that left the group.
    """
    _kill_group(proc.pid)
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


def _classify(rc: int | None, out: _Reader, err: _Reader, result: bytes, expect: bytes | None,
              timed_out: bool, wall: float) -> SandboxResult:
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
    elif expect is not None:
        ok = result == expect and rc == 0
        status, detail = ("passed", "") if ok else ("failed", "checks did not complete")
    else:
        status, detail = ("passed", "") if rc == 0 else ("failed", f"exit status {rc}")
    return SandboxResult(status, rc, stdout, stderr, wall, truncated, detail)


def sandbox_capabilities(python: str | None = None) -> SandboxCapabilities:
    """The isolation level this machine gives the sandbox (probed once per interpreter)."""
    return Sandbox(python=python).capabilities


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int = 10,
    max_procs: int = 32,
    max_output_bytes: int = 64_000,
    max_file_bytes: int = 10 * 2**20,
) -> SandboxResult:
    """Run ``code`` in a fresh sandbox; ``passed`` iff it exits with status 0 within the limits."""
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_procs=max_procs,
                           max_output_bytes=max_output_bytes, max_file_bytes=max_file_bytes)
    return Sandbox(limits).run(code)


def run_checks(code: str, checks: str, *, setup: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code``, ``setup`` then ``checks`` (asserts); ``passed`` iff the checks completed (nonce verified)."""
    return Sandbox(limits).run_checks(code, checks, setup)
