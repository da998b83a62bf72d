"""The program that starts every sandboxed run: trusted code that runs before any untrusted code exists.

It is kept as source text (:data:`BOOTSTRAP`) and passed to the interpreter with ``-c``, so that
nothing from this package (or its virtual environment) is importable inside the sandbox. argv:
``fd_in fd_out mode uid(-1 = keep) rlimits("NAME=V,...") dumpable_via_prctl(0|1)``.

What it does, in order: rlimits; the uid drop (root only: a fresh unprivileged uid, which also
makes the process non-dumpable); then either runs the code (``raw``) or the verdict protocol
(``checks``): a *guardian* thread reads the payload and the pass nonce before any untrusted code
exists, compiles solution, setup and asserts, installs an audit hook, lets the main thread run the
solution and setup, runs the asserts with a builtins snapshot and writes the nonce only if they
returned normally; every other path ends in ``os._exit(1)``. The threat model is in
:mod:`.sandbox`; the hook is defence in depth, never the only barrier at the contained level.
"""

BOOTSTRAP = r'''
import _thread, builtins, marshal, os, resource, sys
import types  # noqa: F401 - imported before the audit hook: it reads tb_frame at import time


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
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
            os.write(2, b"sandbox: could not drop privileges\n")
            os._exit(125)
    elif sys.argv[6] == "1":  # same uid as the parent: forbid other processes to read our memory
        try:
            import ctypes
            failed = ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0  # PR_SET_DUMPABLE
        except (ImportError, OSError):
            failed = True
        if failed:
            os.write(2, b"sandbox: prctl(PR_SET_DUMPABLE) failed\n")
            os._exit(125)
        for name in ("ctypes", "_ctypes"):
            sys.modules.pop(name, None)
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
            path = fsdecode(args[0])
            if "proc" in path.split("/"):
                raise SandboxRefused("/proc is not readable in the sandbox")
            try:
                dev = stat(path).st_dev
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
