"""The parent's watch over a running sandboxed child (used by :mod:`.sandbox`): its output pipes
drained with a cap, the resident memory of its whole process tree, the kill of its process group,
and the count of this uid's processes that the process-count rlimit starts from.
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


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of ``root_pid`` and all its descendants (from the host's /proc; shared pages count per process).

    Why not a cgroup: creating one needs a delegated cgroup tree, which containers and CI runners
    rarely give; the parent can always read /proc. Over-counting shared pages errs on the safe side.
    """
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
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total * resource.getpagesize()


class MemoryGuard(threading.Thread):
    """Kill the run when its process tree holds more resident memory than the cap (per item, not per process)."""

    def __init__(self, pid: int, cap_bytes: int, kill) -> None:
        super().__init__(daemon=True)
        self.pid, self.cap, self.kill = pid, cap_bytes, kill
        self.stop = threading.Event()
        self.exceeded = False
        self.peak = 0

    def run(self) -> None:
        while not self.stop.wait(MEMORY_POLL_S):
            with contextlib.suppress(OSError, ValueError, IndexError):
                used = tree_rss_bytes(self.pid)
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
