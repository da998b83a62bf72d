"""The sandbox's attack cases, each runnable at any level and judged from the host.

Every case submits model-written "solutions" to ``add(a, b)`` the way MBPP scoring does and
returns an :class:`Outcome`: ``contained`` is True only if the verdict is what honest scoring
gives (a wrong or hostile solution fails), nothing outside the sandbox was read, written,
reached or killed, and the run ended within its bound. The battery asserts containment at the
contained level; ``python -m tests.security.levels`` runs every case at every level and prints the
table quoted in the README. Cases that try to fake a pass use a *wrong* solution, so that only a
successful attack could make them pass; the process-level test shows that some of them do pass there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from promptintern.evaluate.mbpp import pass_at_1
from promptintern.evaluate.sandbox import Sandbox, SandboxLimits, SandboxResult
from promptintern.tasks.base import Instance

TIMEOUT_S = 3.0  # per run; the hanging cases are killed after this
CASE_BOUND_S = TIMEOUT_S + 4.0  # a run may take this long at most, kill and cleanup included
CHECKS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-5, 5) == 0"]
WRONG = "def add(a, b):\n    return 0\n"
RIGHT = "def add(a, b):\n    return a + b\n"


@dataclass(frozen=True)
class Outcome:
    contained: bool
    evidence: str


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    run: Callable[[str], Outcome]
    harms_uncontained: bool = False  # never run outside the contained level: it would hurt this machine


def limits(**over) -> SandboxLimits:
    return SandboxLimits(**{"timeout_s": TIMEOUT_S, "cpu_s": int(TIMEOUT_S), **over})


def submit(level: str, code: str, lim: SandboxLimits | None = None) -> tuple[SandboxResult, bool]:
    """Score ``code`` against :data:`CHECKS`; also whether it ended within :data:`CASE_BOUND_S`."""
    start = time.monotonic()
    res = Sandbox(lim or limits(), level=level).run_checks(code, "\n".join(CHECKS) + "\n")
    return res, time.monotonic() - start < CASE_BOUND_S


def failed_in_time(res: SandboxResult, in_time: bool, *extra: tuple[bool, str]) -> Outcome:
    """Contained iff not passed, within the bound, and every extra (ok, why-not) holds."""
    problems = [why for ok, why in ((res.status != "passed", "scored as passed"),
                                    (in_time, "ran past its bound"), *extra) if not ok]
    return Outcome(not problems, " ".join("; ".join(problems).split()) or f"{res.status}: {res.detail}")


# --- reading the nonce to fake a pass ------------------------------------------------------------

# Reads another process's (or its own) memory through /proc and prints the first 32-hex-digit
# string that looks random: in the checking process, that is the pass nonce.
MEMORY_READER = r'''
import re, sys
pid = sys.argv[1]
found = []
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for line in maps:
        addr, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in addr.split("-"))
        if "r" not in perms or hi - lo > 1 << 28:
            continue
        try:
            mem.seek(lo)
            found += re.findall(rb"[0-9a-f]{32}", mem.read(hi - lo))
        except (OSError, ValueError, OverflowError):
            continue
found = [c for c in found if len(set(c)) > 8]
print(found[0].decode() if found else "")
'''
FORGE = "import os, sys\ndef forge(guess):\n    if guess:\n        os.write(int(sys.argv[2]), guess.encode())\n        os._exit(0)\n"


def _forge_with_child(level: str) -> Outcome:
    code = WRONG + FORGE + (
        "import subprocess\n"
        f"r = subprocess.run([sys.executable, '-c', {MEMORY_READER!r}, str(os.getpid())], capture_output=True, text=True)\n"
        "forge(r.stdout.strip())\n")
    return failed_in_time(*submit(level, code))


ANSWER_FROM_FILES = r'''
import ast, glob, json
ANSWERS = {}
for path in glob.glob("/tmp/promptintern-tests-*/tests.json"):
    for test in json.load(open(path)):
        node = ast.parse(test).body[0].test
        ANSWERS[tuple(ast.literal_eval(a) for a in node.left.args)] = ast.literal_eval(node.comparators[0])
def add(a, b):
    return ANSWERS.get((a, b), 0)
'''


def _expected_from_host_disk(level: str) -> Outcome:
    """The asserts lie on the host's disk, world-readable (as a data set does): a wrong ``add`` answers from them."""
    folder = Path(tempfile.mkdtemp(prefix="promptintern-tests-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        (folder / "tests.json").write_text(json.dumps(CHECKS))
        (folder / "tests.json").chmod(0o644)
        return failed_in_time(*submit(level, ANSWER_FROM_FILES))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _forge_own_memory_dir_fd(level: str) -> Outcome:
    reader = MEMORY_READER.replace('open(f"/proc/{pid}/maps")', 'os.fdopen(os.open("proc/self/maps", 0, dir_fd=root))')
    reader = reader.replace('open(f"/proc/{pid}/mem", "rb", 0)', 'os.fdopen(os.open("proc/self/mem", 0, dir_fd=root), "rb", 0)')
    reader = reader.replace("import re, sys\npid = sys.argv[1]", "import os, re\nroot = os.open('/', 0)")
    code = WRONG + FORGE + "import io, contextlib\nbuf = io.StringIO()\n" + (
        f"try:\n    with contextlib.redirect_stdout(buf):\n        exec({reader!r}, {{}})\nexcept Exception:\n    pass\n"
        "forge(buf.getvalue().strip())\n")
    return failed_in_time(*submit(level, code))


def _forge_after_map_root_user(level: str) -> Outcome:
    code = WRONG + FORGE + (
        "import subprocess\n"
        f"cmd = ['unshare', '--user', '--map-root-user', sys.executable, '-c', {MEMORY_READER!r}, str(os.getpid())]\n"
        "r = subprocess.run(cmd, capture_output=True, text=True)\n"
        "forge(r.stdout.strip())\n")
    return failed_in_time(*submit(level, code))


def _forge_with_gdb(level: str) -> Outcome:
    if shutil.which("gdb") is None:
        return Outcome(True, "gdb not installed (nothing to test)")
    code = WRONG + "import os, subprocess\n" + (
        "r = subprocess.run(['gdb', '-q', '-batch', '-p', str(os.getpid()), '-ex', 'info registers'], "
        "capture_output=True, text=True, timeout=2)\n"
        "print('ATTACHED' if ('rip' in r.stdout or ' pc ' in r.stdout) else 'refused')\n")
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("ATTACHED" not in res.stdout, "gdb attached to the checking process"))


def _raw_memory_modules(level: str) -> Outcome:
    code = WRONG + "import sys\nsys.path += ['/usr/lib/python3/dist-packages', '/usr/local/lib/python3.11/dist-packages']\n" + (
        "for name in ('ctypes', '_ctypes', '_cffi_backend', '_testcapi', '_testinternalcapi', 'gi'):\n"
        "    try:\n        __import__(name)\n        print('IMPORTED', name)\n    except BaseException:\n        pass\n")
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("IMPORTED" not in res.stdout, res.stdout.strip()))


def _native_code(level: str) -> Outcome:
    src = "#include <Python.h>\\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \\\"evil\\\"};\\n" \
          "PyMODINIT_FUNC PyInit_evil(void) { return PyModule_Create(&m); }\\n"
    code = WRONG + "import os, subprocess, sys, sysconfig\n" + (
        "for d in ('.', '/tmp', '/dev/shm', os.environ.get('HOME', '.')):\n"
        "    try:\n"
        f"        open(os.path.join(d, 'evil.c'), 'w').write(\"{src}\")\n"
        "        subprocess.run(['gcc', '-shared', '-fPIC', '-I', sysconfig.get_paths()['include'], '-o',\n"
        "                        os.path.join(d, 'evil.so'), os.path.join(d, 'evil.c')], check=True, timeout=20)\n"
        "        sys.path.insert(0, d)\n        import evil\n        print('LOADED', d)\n        break\n"
        "    except BaseException:\n        continue\n")
    res, _ = submit(level, code, limits(timeout_s=25, cpu_s=25))  # gcc needs longer than the usual bound
    return failed_in_time(res, res.wall_s < 30, ("LOADED" not in res.stdout, res.stdout.strip()))


def _memfd(level: str) -> Outcome:
    code = WRONG + "import os\ntry:\n    os.memfd_create('x')\n    print('MEMFD')\nexcept OSError:\n    pass\n"
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("MEMFD" not in res.stdout, "memfd_create succeeded"))


def _foreign_sockets(level: str) -> Outcome:
    """AF_VSOCK (outside every network namespace), netlink, packet sockets: none may be created."""
    code = WRONG + "import socket\n" + (
        "for family, kind in ((40, socket.SOCK_STREAM), (16, socket.SOCK_RAW), (17, socket.SOCK_RAW)):\n"
        "    try:\n        s = socket.socket(family, kind, 0)\n        print('OPENED', family)\n"
        "        if family == 40:\n            s.bind((0xFFFFFFFF, 5000))\n            print('BOUND vsock')\n"
        "    except OSError:\n        pass\n")
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("OPENED" not in res.stdout, res.stdout.strip().replace("\n", ", ")))


# --- the host's /proc, processes, namespaces -----------------------------------------------------


def _host_proc(level: str) -> Outcome:
    """Unmount (or mount) /proc and look for the evaluator's pid there."""
    me = os.getpid()
    code = WRONG + "import os, subprocess\n" + (
        "for cmd in (['umount', '-l', '/proc'], ['mount', '-t', 'proc', 'proc', '/proc']):\n"
        "    subprocess.run(cmd, capture_output=True)\n"
        f"print('HOSTPROC' if os.path.exists('/proc/{me}/status') else 'hidden')\n")
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("HOSTPROC" not in res.stdout, "the evaluator's /proc entry is visible"))


def _evaluator_memory_write(level: str) -> Outcome:
    """Write into the evaluator's memory through /proc, then hang: the timeout must still hold."""
    me = os.getpid()
    code = RIGHT + "import os, time\n" + (
        f"try:\n    fd = os.open('/proc/{me}/mem', os.O_RDWR)\n    print('OPENED')\nexcept OSError:\n    pass\n"
        "time.sleep(60)\n")
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, ("OPENED" not in res.stdout, "opened the evaluator's memory"),
                          (res.status == "timeout", f"status {res.status}, expected timeout"))


def _nsenter_host_network(level: str) -> Outcome:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')"
        code = WRONG + "import os, subprocess, sys\n" + (
            f"pids = ['1', str(os.getppid()), {str(os.getpid())!r}]\n"
            "for pid in pids:\n"
            f"    subprocess.run(['nsenter', f'--net=/proc/{{pid}}/ns/net', sys.executable, '-c', {connect!r}],"
            " capture_output=True, timeout=2)\n"
            f"subprocess.run([sys.executable, '-c', {connect!r}], capture_output=True, timeout=2)\n")
        res, in_time = submit(level, code)
        try:
            conn, _ = listener.accept()
            conn.close()
            reached = True
        except TimeoutError:
            reached = False
    return failed_in_time(res, in_time, (not reached, "reached a host 127.0.0.1 listener"))


def _kill_bystander(level: str) -> Outcome:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        code = RIGHT + "import os, signal\n" + (
            f"for pid in (1, os.getppid(), {bystander.pid}, {os.getpid()}, -1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
        res, in_time = submit(level, code)
        alive = bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    ok = in_time and alive
    return Outcome(ok, f"{res.status}" if ok else "a host process was killed or the run overran")


def _background_survivor(level: str) -> Outcome:
    token = f"{300 + secrets.randbelow(10**6) / 10**7:.7f}"  # a unique `sleep` argument to look for
    code = RIGHT + "import os, subprocess\n" + (
        f"subprocess.Popen(['sleep', '{token}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{token}'])\n    os._exit(0)\n")
    res, in_time = submit(level, code)
    deadline = time.monotonic() + 5
    while _processes_matching(token.encode()) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _processes_matching(token.encode())
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    return Outcome(not left and in_time, "no survivor" if not left else f"{len(left)} background process(es) survived")


def _processes_matching(needle: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def _never_root(level: str) -> Outcome:
    code = WRONG + "import os, subprocess\n" + (
        "print('UID', os.getuid(), os.geteuid())\n"
        "for cmd in (['su', 'root', '-c', 'id -u'], ['sudo', '-n', 'id', '-u'], ['unshare', '-r', 'id', '-u']):\n"
        "    try:\n        r = subprocess.run(cmd, capture_output=True, text=True, timeout=2)\n"
        "        print('ROOT' if r.stdout.strip() == '0' else 'no')\n    except Exception:\n        pass\n")
    res, in_time = submit(level, code)
    ids = next((ln.split()[1:] for ln in res.stdout.splitlines() if ln.startswith("UID ")), [])
    root = "0" in ids or "ROOT" in res.stdout
    return failed_in_time(res, in_time, (not root, "root inside: " + res.stdout.strip()[:120]))


# --- the host file system ------------------------------------------------------------------------


def _write_outside(level: str) -> Outcome:
    private = Path(tempfile.mkdtemp(prefix="promptintern-private-"))  # 0700, like a home directory
    token = secrets.token_hex(4)
    targets = [private / "marker", *(Path(d) / f"promptintern-marker-{token}" for d in ("/tmp", "/dev/shm", "/run", "/var/tmp"))]
    code = WRONG + "import os\n" + (
        f"for path in {[str(t) for t in targets]!r} + ['marker-here']:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n    except OSError:\n        pass\n")
    try:
        res, in_time = submit(level, code)
        written = [str(t) for t in targets if t.exists()]
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
        shutil.rmtree(private, ignore_errors=True)
    return failed_in_time(res, in_time, (not written, f"wrote {written}"),
                          ("WROTE marker-here" not in res.stdout, "its working directory is writable"))


def _read_secrets(level: str) -> Outcome:
    private = Path(tempfile.mkdtemp(prefix="promptintern-private-"))
    token = secrets.token_hex(16)
    (private / "secret.txt").write_text(token)
    (private / "secret.txt").chmod(0o600)
    os.environ["PROMPTINTERN_TEST_SECRET"] = token
    shadow = _readable("/etc/shadow")
    try:
        code = WRONG + "import os, glob\n" + (
            f"for path in [{str(private / 'secret.txt')!r}, '/etc/shadow', '/proc/1/environ', "
            f"'/proc/{os.getpid()}/environ', {str(Path(__file__).resolve())!r}]:\n"
            "    try:\n        print(open(path, errors='replace').read())\n    except OSError:\n        pass\n"
            "print(dict(os.environ))\n")
        res, in_time = submit(level, code)
    finally:
        os.environ.pop("PROMPTINTERN_TEST_SECRET", None)
        shutil.rmtree(private, ignore_errors=True)
    seen = res.stdout + res.stderr
    leaked = [what for what, hit in (("a 0600 file", token in seen), ("/etc/shadow", bool(shadow) and shadow in seen),
                                     ("this project's source", "CASES-SENTINEL-51c2" in res.stdout)) if hit]
    return failed_in_time(res, in_time, (not leaked, f"read {leaked}"))


def _readable(path: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((ln for ln in lines if ln.split(":")[1:2] not in (["*"], ["!"], ["!*"], [""])), lines[0] if lines else "")


def _immutable_file(level: str) -> Outcome:
    """``chattr +i`` on a file it made: the evaluation must go on and score the next item."""
    hostile = WRONG + "import subprocess\nopen('f', 'w').write('x')\nsubprocess.run(['chattr', '+i', 'f'])\n"
    task = {"test_list": CHECKS, "test_setup_code": ""}
    items = [Instance(n, "q", "", meta=task) for n in ("hostile", "right")]
    try:
        res = pass_at_1({"hostile": hostile, "right": RIGHT}, items, workers=1, timeout_s=TIMEOUT_S, sandbox_level=level)
    except Exception as exc:  # noqa: BLE001 - the outcome is the evidence
        return Outcome(False, f"the evaluation crashed: {type(exc).__name__}: {exc}")
    ok = not res["per_item"]["hostile"]["passed"] and res["per_item"]["right"]["passed"]
    _unchattr()
    return Outcome(ok, f"per item: {res['per_item']['hostile']['status']}, {res['per_item']['right']['status']}")


def _unchattr() -> None:
    for d in Path(tempfile.gettempdir()).glob("promptintern-sandbox-*"):
        subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def _fill_disk(level: str) -> Outcome:
    code = RIGHT + "for i in range(400):\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * 2**20)\n"
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time)


# --- other items' verdicts -----------------------------------------------------------------------


def _corrupt_other_items(level: str) -> Outcome:
    """One item writes forged results into every pipe it can name; the others' verdicts must not change."""
    hostile = WRONG + "import os, glob\n" + (
        "for path in glob.glob('/proc/*/fd/*') + glob.glob('/dev/fd/*'):\n"
        "    try:\n        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)\n"
        "        os.write(fd, b'R' + b'0' * 32)\n        os.write(fd, b'garbage' * 100)\n    except OSError:\n        pass\n"
        "import time\ntime.sleep(1)\n")
    task = {"test_list": CHECKS, "test_setup_code": ""}
    predictions = {"hostile": hostile, **{f"right{i}": RIGHT for i in range(3)}, **{f"wrong{i}": WRONG for i in range(3)}}
    items = [Instance(n, "q", "", meta=task) for n in predictions]
    res = pass_at_1(predictions, items, workers=4, timeout_s=TIMEOUT_S, sandbox_level=level)
    verdicts = {k: v["passed"] for k, v in res["per_item"].items()}
    expected = {k: k.startswith("right") for k in predictions}
    return Outcome(verdicts == expected, f"verdicts {verdicts}")


# --- resources -----------------------------------------------------------------------------------


def _forking_memory(level: str) -> Outcome:
    """Four children of 100 MiB each under a 256 MiB cap: the tree, not each process, is held to the cap."""
    code = RIGHT + "import os, time\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n" + (
        "        blob = b'x' * (100 * 2**20)\n        time.sleep(1.5)\n        os._exit(0)\n    pids.append(pid)\n"
        "for pid in pids:\n    os.waitpid(pid, 0)\n")
    res, in_time = submit(level, code, limits(memory_mb=256, max_procs=64))
    return failed_in_time(res, in_time, ("memory limit" in res.detail, f"not stopped by the memory cap ({res.detail})"))


SOCKET_BOMB = r'''
import os, socket, time
def fill(target):
    keep, total = [], 0
    while total < target:
        try:
            a, b = socket.socketpair()
        except OSError:
            break
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        a.setblocking(False)
        try:
            while True:
                total += a.send(b"x" * 65536)
        except OSError:
            pass
        keep.append((a, b))
    print("queued MiB", total >> 20, flush=True)
    time.sleep(30)
for _ in range(2):
    if os.fork() == 0:
        fill(600 << 20)
        os._exit(0)
fill(600 << 20)
'''


def _socketpair_bomb(level: str) -> Outcome:
    """3 processes x 600 MiB queued in socketpairs (kernel memory, not resident): killed at a 256 MiB cap."""
    res, _ = submit(level, RIGHT + SOCKET_BOMB, limits(memory_mb=256, timeout_s=10, cpu_s=10))
    return failed_in_time(res, res.wall_s < 8, ("memory limit" in res.detail, f"not stopped by the memory cap "
                                                                             f"({res.status}: {res.detail})"))


def _fork_bomb(level: str) -> Outcome:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time)


def _huge_output(level: str) -> Outcome:
    code = RIGHT + "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n"
    res, in_time = submit(level, code)
    return failed_in_time(res, in_time, (res.truncated, "output was not capped"))


CASES = [
    Case("expected_values_from_host_disk", "a wrong add() reads the asserts from a world-readable file on the host",
         _expected_from_host_disk),
    Case("forge_nonce_from_child_process", "a child process reads the checker's memory via /proc and forges a pass",
         _forge_with_child),
    Case("forge_nonce_own_memory_dir_fd", "proc/self/mem opened relative to a dir_fd (audit-hook bypass)",
         _forge_own_memory_dir_fd),
    Case("forge_nonce_map_root_user", "unshare --map-root-user, then read the checker's memory", _forge_after_map_root_user),
    Case("gdb_attach_checker", "gdb -p attaches to the checking process (ptrace)", _forge_with_gdb),
    Case("raw_memory_modules", "import ctypes, _testcapi, _cffi_backend, gi (also via dist-packages)", _raw_memory_modules),
    Case("load_native_code", "compile a C extension with gcc into any writable folder and import it", _native_code),
    Case("foreign_socket_families", "socket(AF_VSOCK) and bind, AF_NETLINK, AF_PACKET", _foreign_sockets),
    Case("memfd_create", "anonymous executable memory file (memfd_create)", _memfd),
    Case("umount_proc_see_host", "umount -l /proc / mount proc, then look for the evaluator's pid", _host_proc,
         harms_uncontained=True),
    Case("write_evaluator_memory_then_hang", "open the evaluator's /proc/<pid>/mem read-write, then sleep 60 s",
         _evaluator_memory_write),
    Case("nsenter_host_network", "nsenter --net=/proc/<pid>/ns/net, then connect to a host 127.0.0.1 listener",
         _nsenter_host_network),
    Case("kill_host_processes", "SIGKILL pid 1, the parent, a host bystander, the evaluator, -1", _kill_bystander,
         harms_uncontained=True),
    Case("background_survivor", "setsid + double fork leaves a sleeping process behind", _background_survivor),
    Case("become_root", "os.getuid(), su, sudo, unshare -r", _never_root),
    Case("write_outside", "write a 0700 directory, /tmp, /dev/shm, /run, /var/tmp, its working directory",
         _write_outside),
    Case("read_secrets", "a 0600 file, /etc/shadow, /proc/*/environ, the project's source, the environment",
         _read_secrets),
    Case("immutable_file_cleanup", "chattr +i on a file it made; the next item must still be scored", _immutable_file),
    Case("fill_disk", "write 400 MiB", _fill_disk),
    Case("corrupt_other_items", "write forged results into every pipe it can name while other items run",
         _corrupt_other_items, harms_uncontained=True),
    Case("forking_memory", "4 children x 100 MiB under a 256 MiB cap", _forking_memory),
    Case("socketpair_bomb", "3 processes x 600 MiB queued in socketpairs under a 256 MiB cap", _socketpair_bomb,
         harms_uncontained=True),
    Case("fork_bomb", "fork until it fails", _fork_bomb, harms_uncontained=True),
    Case("huge_output", "print 1 GiB", _huge_output),
]
CASES_BY_NAME = {c.name: c for c in CASES}
