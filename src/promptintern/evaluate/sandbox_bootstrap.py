"""The program that starts every sandboxed run: trusted code that runs before any untrusted code exists.

It is kept as source text (:data:`BOOTSTRAP`) and passed to the interpreter with ``-c``, so that
nothing from this package (or its virtual environment) is importable inside the sandbox. argv:
``fd_in fd_out mode uid(-1 = keep) rlimits("NAME=V,...")``.

What it does, in order: rlimits; the uid drop (root only: a fresh unprivileged uid, which also
makes the process non-dumpable); writes ``R`` (started) on ``fd_out``; then either runs the code
(``raw``) or, in ``calls`` mode, runs the candidate's code and the test's setup, evaluates each
call expression the parent sent (:mod:`.oracle`) and writes their values back on ``fd_out`` as
tagged JSON. Nothing here decides a verdict and nothing here is secret: whatever this process
writes is only a claim about what the candidate's functions returned, judged by the parent against
expected values this process never holds. The encoder therefore needs no protection from the code
it runs next to.
"""

BOOTSTRAP = r'''
import builtins, json, marshal, os, resource, sys

MAX_DEPTH, MAX_NODES, MAX_BYTES = 48, 200000, 1 << 20
_SEQ = ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "Z"))


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


def _encode(value, depth, budget):
    """Tagged JSON of plain data; a subclass of a data type is sent as its base type."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise ValueError("too large or nested too deeply")
    if value is None:
        return ["N"]
    if isinstance(value, bool):
        return ["T" if value else "F"]
    if isinstance(value, int):
        return ["i", hex(int.__index__(value))]
    if isinstance(value, float):
        return ["f", float.hex(float(value))]
    if isinstance(value, complex):
        value = complex(value)
        return ["c", float.hex(value.real), float.hex(value.imag)]
    if isinstance(value, str):
        return ["s", str.__str__(value)]
    if isinstance(value, bytes):
        return ["b", bytes.hex(value)]
    if isinstance(value, dict):
        return ["d", [[_encode(k, depth + 1, budget), _encode(v, depth + 1, budget)] for k, v in dict.items(value)]]
    for kind, tag in _SEQ:
        if isinstance(value, kind):
            return [tag, [_encode(x, depth + 1, budget) for x in kind.__iter__(value)]]
    raise TypeError("a %s is not data" % type(value).__name__)


def _main_calls(fd_in, fd_out):
    # Bound before the candidate runs, so that patching os or json only spoils its own claims, not the exit.
    write, exit_, dumps, eval_, encode = os.write, os._exit, json.dumps, eval, _encode
    payload = _read_payload(fd_in)
    write(fd_out, b"R")
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        code = compile(payload["code"], "<solution>", "exec")
        setup = compile(payload["setup"], "<setup>", "exec")
        calls = [compile(src, "<test call>", "eval") for src in payload["calls"]]
        exec(code, ns)
        exec(setup, ns)
    except BaseException as exc:
        os.write(2, _describe(exc, "solution").encode("utf-8", "replace"))
        os._exit(1)
    out, budget = [], [MAX_NODES]
    for call in calls:
        try:
            value = eval_(call, ns)
        except BaseException as exc:
            out.append(["E", type(exc).__name__[:100]])
            continue
        try:
            out.append(encode(value, 0, budget))
        except BaseException as exc:
            out.append(["!", str(exc)[:200]])
    try:
        data = dumps(out).encode("ascii")
        if len(data) > MAX_BYTES:
            data = dumps([["!", "results too large"]] * len(out)).encode("ascii")
        view = memoryview(data)
        while view:
            n = write(fd_out, view)
            if not n:
                break
            view = view[n:]
    finally:
        exit_(0)


def _main_raw(fd_in, fd_out):
    code = _read_payload(fd_in)["code"]
    os.write(fd_out, b"R")
    os.close(fd_out)
    ns = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(code, "<sandbox>", "exec"), ns)


_setup()
if sys.argv[3] == "calls":
    _main_calls(int(sys.argv[1]), int(sys.argv[2]))
else:
    _main_raw(int(sys.argv[1]), int(sys.argv[2]))
'''
