"""The parent's watch over a running sandboxed child (used by :mod:`.sandbox`): its output pipes
drained with a cap, the memory of its whole process tree, the kill of its process group, and the
count of this uid's processes that the process-count rlimit starts from.

**Memory the kernel spends for the tree.** Resident pages are not all: data queued in sockets
lives in kernel memory, invisible to RSS and, measured on this project's machine, to a cgroup v1
memory limit too (about 2.9 GiB queued in ``AF_UNIX`` socketpairs by 6 processes left the cgroup's
peak usage at 51 MiB). So every socket the tree holds is charged at the most its buffers can queue, twice the
larger of ``net.core.wmem_max`` and ``rmem_max`` (the kernel doubles ``SO_SNDBUF``), on top of the
resident memory. A scored program needs no sockets; the socketpair bomb is killed as soon as its
sockets could hold more than the cap. Not seen: sockets in flight (sent over ``SCM_RIGHTS`` and
closed by their holder), which the kernel limits to the open-files rlimit per uid.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading

MEMORY_POLL_S = 0.05


class PipeReader(threading.Thread):
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


def socket_cost_bytes() -> int:
    """The most one socket's buffers can queue: 2 x max(net.core.wmem_max, rmem_max); 8 MiB if unreadable."""
    sizes = []
    for name in ("wmem_max", "rmem_max"):
        with contextlib.suppress(OSError, ValueError), open(f"/proc/sys/net/core/{name}") as f:
            sizes.append(int(f.read()))
    return 2 * max(sizes) if sizes else 8 * 2**20


def _sockets(pid: int) -> int:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    n = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return n


def _tree(root_pid: int) -> dict[int, int]:
    """Each process of the tree under ``root_pid`` (included), with its resident pages, from the host's /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2:].split()
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21])
    tree, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        tree[pid] = rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return tree


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of ``root_pid`` and all its descendants (shared pages count per process).

    Why not a cgroup: creating one needs a delegated cgroup tree, which containers and CI runners
    rarely give; the parent can always read /proc. Over-counting shared pages errs on the safe side.
    """
    return sum(_tree(root_pid).values()) * resource.getpagesize()


def tree_memory_bytes(root_pid: int, socket_cost: int) -> int:
    """Resident memory of the tree plus ``socket_cost`` for every socket descriptor it holds."""
    tree = _tree(root_pid)
    return sum(tree.values()) * resource.getpagesize() + sum(_sockets(pid) for pid in tree) * socket_cost


class MemoryGuard(threading.Thread):
    """Kill the run when its process tree holds more resident memory than the cap (per item, not per process)."""

    def __init__(self, pid: int, cap_bytes: int, kill) -> None:
        super().__init__(daemon=True)
        self.pid, self.cap, self.kill = pid, cap_bytes, kill
        self.stop = threading.Event()
        self.exceeded = False
        self.peak = 0
        self.socket_cost = socket_cost_bytes()

    def run(self) -> None:
        while not self.stop.wait(MEMORY_POLL_S):
            with contextlib.suppress(OSError, ValueError, IndexError):
                used = tree_memory_bytes(self.pid, self.socket_cost)
                self.peak = max(self.peak, used)
                if used > self.cap:
                    self.exceeded = True
                    self.kill()
                    return


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def user_process_count() -> int:
    """Processes of this uid now: as a non-root user, the process-count rlimit counts from them."""
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
