"""The sandbox's seccomp filter, loaded into a host child process: what it refuses, what it leaves.

Runs without bubblewrap (``prctl(PR_SET_SECCOMP)`` needs only ``no_new_privs``), so a machine
without it still checks the filter itself. Each call is also made without the filter, and the
report prints both, so a denial is shown against what the kernel would otherwise do.
"""

from __future__ import annotations

import errno
import json
import platform
import subprocess
import sys

import pytest

from promptintern.evaluate.seccomp import seccomp_program

PROBE = r'''
import ctypes, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[1] == "filter":
    prog = sys.stdin.buffer.read()
    buf = ctypes.create_string_buffer(prog, len(prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
def sock(family, kind=socket.SOCK_STREAM, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return 0
    except OSError as exc:
        return exc.errno
def pair():
    try:
        a, b = socket.socketpair()
        a.close(); b.close()
        return 0
    except OSError as exc:
        return exc.errno
def raw(nr, *args):
    r = libc.syscall(nr, *args)
    if r >= 0:
        os.close(r)
        return 0
    return ctypes.get_errno()
params = ctypes.create_string_buffer(120)
print(json.dumps({
    "AF_UNIX": sock(socket.AF_UNIX), "socketpair": pair(), "AF_INET": sock(socket.AF_INET),
    "AF_INET6": sock(socket.AF_INET6), "AF_VSOCK": sock(40), "AF_NETLINK": sock(16, socket.SOCK_RAW, 0),
    "AF_PACKET": sock(17, socket.SOCK_RAW, 0), "AF_BLUETOOTH": sock(31, socket.SOCK_STREAM, 3),
    "AF_ALG": sock(38, socket.SOCK_SEQPACKET, 0),
    "io_uring_setup": raw(425, 4, ctypes.byref(params)),
    "pidfd_getfd": raw(438, -1, 0, 0),
}))
'''
ALLOWED = ("AF_UNIX", "socketpair", "AF_INET", "AF_INET6")
REFUSED = {"AF_VSOCK": errno.EAFNOSUPPORT, "AF_NETLINK": errno.EAFNOSUPPORT, "AF_PACKET": errno.EAFNOSUPPORT,
           "AF_BLUETOOTH": errno.EAFNOSUPPORT, "AF_ALG": errno.EAFNOSUPPORT, "io_uring_setup": errno.EPERM,
           "pidfd_getfd": errno.EPERM}


def _probe(with_filter: bool) -> dict[str, int]:
    program = seccomp_program()
    res = subprocess.run([sys.executable, "-I", "-c", PROBE, "filter" if with_filter else "none"],
                         input=program if with_filter else b"", capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode()[-500:]
    return json.loads(res.stdout)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="the filter describes x86-64 and AArch64 only")
def test_filter_refuses_foreign_socket_families_and_io_uring():
    bare, filtered = _probe(False), _probe(True)
    print("\nwithout filter (errno, 0 = succeeded):", bare, "\nwith filter:", filtered)
    for name in ALLOWED:
        assert filtered[name] == 0, f"{name} must keep working"
    for name, code in REFUSED.items():
        assert filtered[name] == code, f"{name}: errno {filtered[name]}, expected {code}"
    assert bare["AF_NETLINK"] == 0  # the kernel would have given it: the refusal is the filter's
