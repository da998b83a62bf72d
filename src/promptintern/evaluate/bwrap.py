"""The contained level's view of the machine, as bubblewrap arguments (used by :mod:`.sandbox`).

bubblewrap (0.8+; Debian package ``bubblewrap``) with new mount, pid, network, ipc and uts
namespaces. As root on the host only ``CAP_SETUID``/``CAP_SETGID`` are kept, for the bootstrap's
drop to a fresh unprivileged uid; as a normal user, bubblewrap's user namespace maps the caller's
own non-zero uid, without capabilities. Inside, the whole file system is **read-only** (system
directories and the interpreter's prefix bound read-only; ``/tmp``, ``/dev`` and the working
directory remounted read-only): nothing to fill, nothing to change, no place to put native code to
load. There is **no /proc**. Modules that give Python raw memory access (:data:`MASKED_MODULES`)
are replaced by ``/dev/null`` and third-party package folders (``site-`` and ``dist-packages``,
where ``_cffi_backend`` or GObject bindings live) are empty, so no import route reaches them;
solutions get the standard library only. Home directories, the project, the data and the host's
``/tmp`` do not exist inside.
"""

from __future__ import annotations

import glob
import os
import sys

SANDBOX_WORKDIR = "/tmp/sandbox"  # the (read-only, empty) working directory inside a bwrap sandbox
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Extension modules that hand Python raw memory access; replaced by /dev/null inside the sandbox.
MASKED_MODULES = ("_ctypes*.so", "_cffi_backend*.so", "_test*.so", "_xxtestfuzz*.so")


def base_python() -> str:
    """The real interpreter behind this (possibly virtual-env) Python."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


def python_roots(python: str) -> list[str]:
    """Directories the interpreter needs inside a bwrap sandbox: its prefix and its binary's folder."""
    if base_python() == python:
        roots = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)]
    else:  # another interpreter: assume the usual <prefix>/bin/python layout
        roots = [os.path.dirname(os.path.dirname(python))]
    roots.append(os.path.dirname(python))
    return sorted({r for r in roots if not any(r == s or r.startswith(s + "/") for s in ("/usr", "/bin", "/lib"))})


def masked_paths(python: str) -> tuple[str, ...]:
    """What to hide inside the sandbox: raw-memory extension modules and third-party package folders.

    Files matching :data:`MASKED_MODULES` in ``lib-dynload`` become ``/dev/null``; ``site-packages``
    and ``dist-packages`` (the system's too: Debian's python3.11 modules would load into our 3.11)
    become empty. Solutions run with the standard library only.
    """
    bases = [*python_roots(python), "/usr", "/usr/local"]
    found: set[str] = set()
    for base in bases:
        for pattern in MASKED_MODULES:
            found.update(glob.glob(os.path.join(base, "lib*", "python3*", "lib-dynload", pattern)))
        for sub in ("site-packages", "dist-packages"):
            found.update(glob.glob(os.path.join(base, "lib*", "python3*", sub)))
    return tuple(sorted({os.path.realpath(f) for f in found if os.path.exists(f)}))


def bwrap_args(bwrap: str, python: str, root: bool, masks: tuple[str, ...], seccomp_fd: int | None) -> list[str]:
    """bubblewrap's command line up to ``--``: namespaces, the read-only view, masks, seccomp."""
    args = [bwrap, "--die-with-parent", "--new-session"]
    if root:  # privileged: keep only what the bootstrap needs to drop to the sandbox uid
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # a user namespace mapping the caller's own (non-zero) uid, without capabilities
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
    for r in python_roots(python):
        parts = r.strip("/").split("/")
        for i in range(1, len(parts)):
            anc = "/" + "/".join(parts[:i])
            if anc not in present:
                args += ["--perms", "0755", "--dir", anc]
                present.add(anc)
        args += ["--ro-bind", r, r]
    for path in masks:
        if os.path.isdir(path):
            args += ["--perms", "0755", "--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    args += ["--dev", "/dev", "--remount-ro", "/dev",
             "--perms", "0755", "--size", "65536", "--tmpfs", "/tmp",
             "--perms", "0755", "--dir", SANDBOX_WORKDIR, "--remount-ro", "/tmp", "--chdir", SANDBOX_WORKDIR,
             "--setenv", "HOME", SANDBOX_WORKDIR, "--setenv", "TMPDIR", SANDBOX_WORKDIR]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--"]
