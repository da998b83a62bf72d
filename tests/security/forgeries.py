"""In-process routes to the verdict, each tried for real by a *wrong* ``add``: all must score failed.

Every program here reaches for the state that decided the verdict when the asserts ran next to the
candidate (a pass nonce and the result pipe in some frame's locals) through one introspection
route, and forges what it finds: under that design the gc frame walk and the subinterpreter passed.
Now the sandbox holds no expected value and decides nothing; the most a forger can do is send the
parent a claim (here: every call returned ``True``), which the parent's own comparison rejects.
:data:`FORGER` prints ``REACHED`` when a route got to the result channel, so a case's output shows
whether the route worked or was refused.
"""

from __future__ import annotations

from .cases import WRONG

# Walk a frame chain; forge the old nonce protocol if found, else claim "True" for every call.
FORGER = r'''
import os as _os
def _forge_from(frame):
    while frame is not None:
        for scope in (frame.f_locals, frame.f_globals):
            fd = scope.get("fd_out")
            if isinstance(fd, int) and "nonce" in scope:
                _os.write(fd, scope["nonce"])
                _os._exit(0)
            if isinstance(fd, int):
                print("REACHED", frame.f_code.co_name, flush=True)
                _os.write(fd, b'[["T"], ["T"], ["T"]]')
                _os._exit(0)
        frame = frame.f_back
'''

_SUB = FORGER + "import sys\nfor _f in list(sys._current_frames().values()):\n    _forge_from(_f)\n"

# Older in-process tricks (exits, fake output, patching, fd guessing, refused introspection).
_TRICKS = {
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
    "new_audit_hook": WRONG + "import sys\nsys.addaudithook(lambda *a: None)\n",
    "thread_keeps_running": WRONG + (
        "import threading, time, os\n"
        "def late():\n    time.sleep(0.5)\n    os._exit(0)\n"
        "threading.Thread(target=late).start()\n"),
}

FORGERIES = {
    "gc_frame_walk_forgery": WRONG + FORGER + (
        "import gc\ngc.set_debug(gc.DEBUG_SAVEALL)\n"
        "def helper():\n    try:\n        raise ValueError\n    except ValueError as e:\n        return e\n"
        "def add(a, b):\n    helper()\n    gc.collect()\n"
        "    for o in list(gc.garbage):\n        if type(o).__name__ == 'frame':\n            _forge_from(o)\n"
        "        tb = getattr(o, '__traceback__', None)\n        if tb is not None:\n            _forge_from(tb.tb_frame)\n"
        "    return 0\n"),
    "subinterpreter_forgery": WRONG + (
        "import _xxsubinterpreters as si\n"
        f"def add(a, b):\n    si.run_string(si.create(), {_SUB!r})\n    return 0\n"),
    "eq_always_true_object": "class Liar:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                             "def add(a, b):\n    return Liar()\n",
    "eq_always_true_int_subclass": "class Liar(int):\n    def __eq__(self, other):\n        return True\n"
                                   "    __hash__ = int.__hash__\ndef add(a, b):\n    return Liar(0)\n",
    "eq_always_true_list_subclass": "class Liar(list):\n    def __eq__(self, other):\n        return True\n"
                                    "    def __iter__(self):\n        return iter([3, 4, 0])\n"
                                    "def add(a, b):\n    return Liar()\n",
    "ctypes_frame_forgery": WRONG + FORGER + (
        "def add(a, b):\n    import ctypes\n    get = ctypes.pythonapi.PyEval_GetFrame\n    get.restype = ctypes.py_object\n"
        "    _forge_from(get())\n    return 0\n"),
    "settrace_frame_forgery": WRONG + FORGER + (
        "import sys\ndef tracer(frame, event, arg):\n    _forge_from(frame)\n    return tracer\nsys.settrace(tracer)\n"),
    "setprofile_frame_forgery": WRONG + FORGER + (
        "import sys\ndef prof(frame, event, arg):\n    _forge_from(frame)\nsys.setprofile(prof)\n"),
    "inspect_stack_forgery": WRONG + FORGER + (
        "import inspect\ndef add(a, b):\n    for info in inspect.stack():\n        _forge_from(info.frame)\n    return 0\n"),
    "thread_current_frames_forgery": WRONG + FORGER + (
        "import sys, threading\ndef spy():\n    for f in list(sys._current_frames().values()):\n        _forge_from(f)\n"
        "def add(a, b):\n    t = threading.Thread(target=spy)\n    t.start()\n    t.join()\n    return 0\n"),
    "builtins_and_json_patch": WRONG + (
        "import builtins, json\njson.dumps = lambda *a, **k: '[[\"T\"], [\"T\"], [\"T\"]]'\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.eval = lambda *a, **k: True\n"),
    "signal_timer_frame_forgery": WRONG + FORGER + (
        "import signal\nsignal.signal(signal.SIGALRM, lambda s, frame: _forge_from(frame))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n"
        "def add(a, b):\n    x = 0\n    for i in range(200000):\n        x += i\n    return 0\n"),
    "atexit_frame_forgery": WRONG + FORGER + (
        "import atexit, sys\natexit.register(lambda: [_forge_from(f) for f in sys._current_frames().values()])\n"),
    "excepthook_forgery": WRONG + FORGER + (
        "import sys, threading\ndef hook(*args):\n    for f in list(sys._current_frames().values()):\n        _forge_from(f)\n"
        "sys.excepthook = hook\nthreading.excepthook = hook\n"
        "def add(a, b):\n    t = threading.Thread(target=lambda: 1 / 0)\n    t.start()\n    t.join()\n    return 0\n"),
    "nested_result_bomb": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
    "huge_result": "def add(a, b):\n    return 'x' * (200 * 2**20)\n",
    "self_referencing_result": "def add(a, b):\n    x = [3]\n    x.append(x)\n    return x\n",
}

FAKES = {**_TRICKS, **FORGERIES}
