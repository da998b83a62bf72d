"""CPU threads for torch on a machine shared with other work: how many, and how they wait.

torch on Linux runs its intra-op threads under GNU OpenMP (libgomp), whose threads *spin* at every
barrier before sleeping. When another process holds one of the cores, the spinning threads burn
their time slices waiting for a descheduled sibling, and a generation that takes 5 s alone can take
over a minute (bench/threads_contention.py measures it). Two defences, both torch-free so they can
run before torch is imported:

- :func:`prepare_openmp` sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once) unless
  the user chose a policy; libgomp reads it when it is loaded, i.e. on ``import torch``.
- :func:`resolve_threads` picks the thread count: ``--threads`` (the CLI puts it in
  ``$PROMPTINTERN_THREADS`` while the command runs, see :func:`cli_threads`), else ``$PROMPTINTERN_THREADS``,
  else the config's ``num_threads``, else :func:`available_cores`. The environment outranks the
  config because the thread count is a property of the machine, not of the experiment.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path

from .errors import ConfigError

THREADS_ENV = "PROMPTINTERN_THREADS"
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prepare_openmp(environ: MutableMapping[str, str] = os.environ) -> None:
    """Make OpenMP threads sleep instead of spin, unless the user set a wait policy.

    Only effective before torch (and with it libgomp) is loaded.
    """
    environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


def parse_threads(value: object, where: str) -> int:
    """``value`` as a thread count >= 1; anything else is a one-line :class:`ConfigError`."""
    try:
        n = int(str(value).strip())
    except ValueError as exc:
        raise ConfigError(f"{where}: expected a whole number of threads, got {value!r}") from exc
    if n < 1:
        raise ConfigError(f"{where}: threads must be >= 1, got {n}")
    return n


def env_threads(environ: Mapping[str, str] = os.environ) -> int | None:
    """The thread count set in ``$PROMPTINTERN_THREADS``, or None when unset or empty."""
    raw = environ.get(THREADS_ENV, "").strip()
    return parse_threads(raw, f"${THREADS_ENV}") if raw else None


def resolve_threads(configured: int | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """The thread count to use: the environment (set by ``--threads``), else ``configured``,
    else :func:`available_cores`."""
    if configured is not None:
        configured = parse_threads(configured, "num_threads")
    return env_threads(environ) or configured or available_cores()


@contextlib.contextmanager
def cli_threads(n: int | None, environ: MutableMapping[str, str] = os.environ) -> Iterator[None]:
    """``$PROMPTINTERN_THREADS`` set to ``--threads`` while a command runs, so that the library and
    its worker processes see it, and restored afterwards, so that an in-process caller of
    ``main()`` (a test, a notebook) keeps its own environment."""
    if n is None:
        yield
        return
    value, before = str(parse_threads(n, "--threads")), environ.get(THREADS_ENV)
    environ[THREADS_ENV] = value
    try:
        yield
    finally:
        if before is None:
            environ.pop(THREADS_ENV, None)
        else:
            environ[THREADS_ENV] = before


def available_cores() -> int:
    """Physical cores this process may run on (affinity, SMT siblings and cgroup quota applied)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    n = len(cores) or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, quota)) if quota else n


def _cgroup_cpu_quota() -> int | None:
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, -(-int(limit) // int(period)))
