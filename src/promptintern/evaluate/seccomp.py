"""A seccomp filter for the sandbox: the system calls that read another process's memory or build a way out.

bubblewrap loads it (``bwrap --seccomp FD``) for the whole sandboxed process tree, after its own
setup and before the interpreter starts, so no code inside can remove it. The verdict no longer
depends on it (nothing secret lives in the sandbox; see :mod:`.oracle`); it narrows the kernel
surface the code can reach: no ``ptrace`` or ``process_vm_readv`` of a sibling (a ``gdb -p`` or a
small C program started by the solution), whatever the kernel would allow for the same uid. It also refuses
new namespaces and mounts (``unshare --map-root-user``, ``nsenter``, ``umount``: ways to become
root in a namespace or to peel off the sandbox's view), and kernel interfaces no MBPP solution needs
(BPF, perf, keyrings, userfaultfd, modules, file handles, ``io_uring_*``, ``pidfd_getfd``, ``kcmp``,
``process_madvise``, swap, reboot, ``syslog``, accounting, quotas, ``fanotify``, port I/O). Sockets
are limited to the families a program may use inside the sandbox's empty network namespace:
``AF_UNIX``, ``AF_INET`` and ``AF_INET6`` (private loopback only); every other family (``AF_VSOCK``,
which no network namespace covers, ``AF_NETLINK``, ``AF_PACKET``, Bluetooth, ...) fails with
``EAFNOSUPPORT``, as on a kernel without it. Other refused calls fail with ``EPERM``;
``clone3`` fails with ``ENOSYS`` so that the C library falls back to ``clone``, whose flags the
filter can inspect (the way container runtimes handle it).

The program is classic BPF written out by hand: the libseccomp bindings are not on PyPI as a
wheel, and the filter is a dozen comparisons. Only x86-64 and AArch64 are described; elsewhere
:func:`seccomp_program` returns ``None`` and the sandbox says so.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K, _JGE_K, _JSET_K = 0x15, 0x35, 0x45
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data; the low 32 bits of args[0] (little endian)
_X32_BIT = 0x40000000
_CLONE_NEW_MASK = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME

_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "unshare",
           "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "kexec_load",
           "init_module", "finit_module", "open_by_handle_at", "name_to_handle_at", "open_tree", "move_mount",
           "fsopen", "fsconfig", "fsmount", "mount_setattr", "memfd_create", "io_uring_setup", "io_uring_enter",
           "io_uring_register", "pidfd_getfd", "process_madvise", "kcmp", "acct", "swapon", "swapoff", "reboot",
           "syslog", "kexec_file_load", "delete_module", "fanotify_init", "quotactl", "lookup_dcookie", "iopl",
           "ioperm")
_SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

_ARCHES: dict[str, tuple[int, bool, dict[str, int]]] = {
    # machine: (AUDIT_ARCH_*, refuse the x32 numbering, syscall numbers)
    "x86_64": (0xC000003E, True, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
        "pivot_root": 155, "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246, "init_module": 175,
        "finit_module": 313, "open_by_handle_at": 304, "name_to_handle_at": 303, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "mount_setattr": 442,
        "memfd_create": 319, "clone": 56, "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "pidfd_getfd": 438, "process_madvise": 440, "kcmp": 312, "acct": 163,
        "swapon": 167, "swapoff": 168, "reboot": 169, "syslog": 103, "kexec_file_load": 320, "delete_module": 176,
        "fanotify_init": 300, "quotactl": 179, "lookup_dcookie": 212, "iopl": 172, "ioperm": 173, "socket": 41,
        "socketpair": 53}),
    "aarch64": (0xC00000B7, False, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
        "pivot_root": 41, "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104, "init_module": 105,
        "finit_module": 273, "open_by_handle_at": 265, "name_to_handle_at": 264, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "mount_setattr": 442,
        "memfd_create": 279, "clone": 220, "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "pidfd_getfd": 438, "process_madvise": 440, "kcmp": 272, "acct": 89,
        "swapon": 224, "swapoff": 225, "reboot": 142, "syslog": 116, "kexec_file_load": 294, "delete_module": 106,
        "fanotify_init": 262, "quotactl": 60, "lookup_dcookie": 18, "socket": 198, "socketpair": 199}),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k)


def _assemble(arch: int, x32: bool, numbers: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) tuples; jumps are resolved against three final return blocks."""
    body: list[tuple[str, int, int | str, int | str]] = []  # (kind, opcode, target-if-true, k)
    body.append(("ld", _LD_W_ABS, 0, _OFF_ARCH))
    body.append(("jne_kill", _JEQ_K, 0, arch))
    body.append(("ld", _LD_W_ABS, 0, _OFF_NR))
    if x32:
        body.append(("j", _JGE_K, "eperm", _X32_BIT))
    for name in _DENIED:
        if name in numbers:  # iopl/ioperm exist on x86 only
            body.append(("j", _JEQ_K, "eperm", numbers[name]))
    body.append(("j", _JEQ_K, "enosys", numbers["clone3"]))
    body.append(("j", _JEQ_K, "clone", numbers["clone"]))
    body.append(("j", _JEQ_K, "socket", numbers["socket"]))
    body.append(("j", _JEQ_K, "socket", numbers["socketpair"]))
    body.append(("ret", _RET_K, 0, _RET_ALLOW))
    labels = {"clone": len(body)}
    body.append(("ld", _LD_W_ABS, 0, _OFF_ARG0))
    body.append(("j", _JSET_K, "eperm", _CLONE_NEW_MASK))
    body.append(("ret", _RET_K, 0, _RET_ALLOW))
    labels["socket"] = len(body)
    body.append(("ld", _LD_W_ABS, 0, _OFF_ARG0))
    for family in _SOCKET_FAMILIES:
        body.append(("j", _JEQ_K, "socket_ok", family))
    body.append(("ret", _RET_K, 0, _RET_ERRNO | errno.EAFNOSUPPORT))
    labels["socket_ok"] = len(body)
    body.append(("ret", _RET_K, 0, _RET_ALLOW))
    labels["eperm"] = len(body)
    body.append(("ret", _RET_K, 0, _RET_ERRNO | errno.EPERM))
    labels["enosys"] = len(body)
    body.append(("ret", _RET_K, 0, _RET_ERRNO | errno.ENOSYS))
    labels["kill"] = len(body)
    body.append(("ret", _RET_K, 0, _RET_KILL_PROCESS))
    program = []
    for i, (kind, code, target, k) in enumerate(body):
        if kind == "j":
            program.append(_insn(code, int(k), jt=labels[str(target)] - i - 1))
        elif kind == "jne_kill":
            program.append(_insn(code, int(k), jt=0, jf=labels["kill"] - i - 1))
        else:
            program.append(_insn(code, int(k)))
    if any(not 0 <= jt <= 255 or not 0 <= jf <= 255 for _, jt, jf, _ in program):
        raise ValueError("seccomp jumps must go forward by at most 255 instructions")
    return program


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The compiled filter (an array of ``struct sock_filter``) for this machine, or None if not described."""
    spec = _ARCHES.get(machine or platform.machine())
    if spec is None:
        return None
    return b"".join(struct.pack("<HBBI", *insn) for insn in _assemble(*spec))
