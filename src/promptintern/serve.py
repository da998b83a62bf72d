"""``promptintern serve``: an OpenAI-compatible chat-completions endpoint for a trained run.

Two engines, each in a child process (:mod:`promptintern.serve_worker`) behind the same gate
(:mod:`promptintern.serve_guard`: API key, inference routes only, request bodies checked,
``max_tokens`` capped, request timeout):

- ``transformers`` (default): ``transformers serve`` (FastAPI + uvicorn, from the
  ``transformers[serving]`` extra) pinned to a local HF directory; GPU or CPU, any HF model.
  It runs one ``generate`` at a time.
- ``llama.cpp``: llama-cpp-python's server on a GGUF file (``promptintern export --format gguf``);
  the CPU engine. llama-cpp-python's server also runs one generation at a time (one slot).

What is served by the transformers engine:

- a merged export (``promptintern export --merge``) or any HF model directory: as is;
- a run directory: its adapter merged into the base in fp32 (the same weights ``infer``
  serves on the CPU) and exported once into ``<cache>/serve/<fingerprint>/model``; the
  fingerprint covers the adapter, the run config and the base weights, so a retrained run
  is re-exported and an unchanged one is reused;
- an adapter-only export is refused: ``transformers serve`` loads full models only (vLLM's
  ``--enable-lora`` serves adapters; see docs/deploy.md).

The llama.cpp engine serves a ``.gguf`` file or a GGUF export directory.

The export's chat template carries the method's served prompt (:mod:`promptintern.exporter`),
so clients send the raw query. The model id clients must name is the served path
(``GET /v1/models`` lists it; a request without ``model`` gets it too).

The supervisor (this module, torch-free) checks every argument first (one-line errors), warns on
a non-loopback bind and refuses it without an API key unless told, starts the worker in a
process group of its own with the thread count in its environment (so ``transformers serve``'s
model process gets it too), prints ``ready`` once ``/health`` answers, and on SIGINT or SIGTERM
asks the group to stop and kills it after :data:`STOP_GRACE_S` seconds, so a long generation
cannot keep the server alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunDirError, UserError

EXPORT_VERSION = 2  # bump when the serving export changes, so cached exports are rebuilt (2: serving.json)
ENGINES = ("transformers", "llama.cpp")
DEFAULT_MAX_TOKENS = 512  # the cap when the served path records no answer lengths
STOP_GRACE_S = 10.0  # after SIGTERM, in-flight work gets this long before the server is killed
SERVING_FILE = "serving.json"  # beside an export (exporter.SERVING_FILE): the cap from the run's answers
DEVICE_RE = re.compile(r"^(cpu|auto|mps|(cuda|xpu)(:\d+)?)$")


@dataclass
class ServeArgs:
    """Where and how ``promptintern serve`` listens."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback by default; 0.0.0.0 exposes it)."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    device: str | None = field(default=None, metadata={"help": "Torch device (default: a GPU when visible, else the CPU)."})
    log_level: str = field(default="warning", metadata={"help": "Log level inside the server."})
    engine: str = field(default="transformers", metadata={"help": "transformers (HF directory, GPU or CPU) or llama.cpp (GGUF, CPU)."})
    api_key: str | None = field(default=None, metadata={"help": "Required as 'Authorization: Bearer KEY' (default: $PROMPTINTERN_API_KEY)."})
    max_tokens: int | None = field(default=None, metadata={"help": "Server-side cap on max_tokens (default: the run's auto answer length, else 512)."})
    timeout_s: float = field(default=300.0, metadata={"help": "A request with no answer started after this many seconds gets 504."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads of the generating process (default: --threads, else the cores available)."})
    allow_unauthenticated: bool = field(default=False, metadata={"help": "Allow a non-loopback --host without an API key."})
    n_ctx: int = field(default=2048, metadata={"help": "llama.cpp context length in tokens (prompt + answer)."})

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def health_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/health"


class ServerMissing(UserError):
    """The serving extra is not installed."""


def run_fingerprint(run_dir: Path) -> dict[str, Any]:
    """What the served export of ``run_dir`` depends on: adapter, configs and the base weights."""
    from .identity import file_digest, model_identity
    from .io import read_json

    files = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "train/config.json", "config.yaml"]
    record = read_json(run_dir / "train" / "config.json")
    return {
        "kind": "serve-export", "version": EXPORT_VERSION, "base": model_identity(record["model"]),
        "files": {f: file_digest(run_dir / f) for f in files if (run_dir / f).is_file()},
    }


def export_for_serving(run_dir: Path) -> Path:
    """The merged export of ``run_dir`` in the cache (built on first use, published atomically)."""
    from .checksums import directory_problem
    from .exporter import ADAPTER_FILES, export
    from .io import read_json
    from .models import MARKER, cache_root, publish_dir

    if not all((run_dir / "adapter" / f).is_file() for f in ADAPTER_FILES):
        raise RunDirError(f"{run_dir} has no trained adapter; train it first (a base model is served as is "
                          "with 'transformers serve')")
    if not (run_dir / "train" / "config.json").is_file():
        raise RunDirError(f"{run_dir} has no train/config.json; it was not trained by promptintern")
    recipe = run_fingerprint(run_dir)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    dest = cache_root() / "serve" / key
    marker = dest / MARKER
    if not (marker.is_file() and read_json(marker) == recipe) or directory_problem(dest / "model") is not None:
        publish_dir(dest, recipe, lambda tmp: export(run_dir, tmp / "model", merge=True))
    return dest / "model"


def resolve_served_dir(path: Path) -> Path:
    """The model directory to serve for ``path`` (a run or an export); see the module docstring."""
    from .checksums import directory_problem, has_checksums

    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such directory (give a run directory or an exported model)")
    if (path / "config.json").is_file():
        problem = directory_problem(path) if has_checksums(path) else None
        if problem is not None:
            raise RunDirError(f"{path}: {problem}; export the run again")
        return path.resolve()
    if (path / "adapter_config.json").is_file():
        raise RunDirError(f"{path} is a LoRA adapter export; serve the run directory or a --merge export")
    if (path / "adapter").is_dir() or (path / "train" / "config.json").is_file():
        return export_for_serving(path.resolve())
    raise RunDirError(f"{path} is neither a promptintern run directory nor an exported model")


def check_port(host: str, port: int) -> None:
    """Fail in a line, before the model loads, when ``host:port`` cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port") from exc


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for tests and the load benchmark)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(url: str) -> bool:
    """Whether a started server answers ``url`` (its health endpoint) with 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve_command(
    args: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
    start_timeout_s: float = 120.0, stop_timeout_s: float = 30.0,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``promptintern serve ARGS`` on a free loopback port, for tests and benchmarks; always stopped.

    Yields (process, base URL) once the command has printed its ``ready:`` line — the supervisor
    prints it after ``/health`` answers, so a caller that polled ``/health`` itself could still race
    it. A server that exits or is not ready in ``start_timeout_s`` is a RuntimeError with the log's
    tail. On the way out: SIGTERM, then SIGKILL after ``stop_timeout_s``.
    """
    port = free_loopback_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "promptintern.cli", *args, "--port", str(port)]
    with open(log_path, "a") as out:
        start = out.tell()  # a log shared by several servers: only this one's lines count
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def said() -> str:
        with open(log_path, "rb") as fh:
            fh.seek(start)
            return fh.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + start_timeout_s
        while f"ready: {url}" not in said():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = said()[-3000:]
                raise RuntimeError(f"server did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host!r}: cannot resolve it ({exc})") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_device(engine: str, device: str | None) -> None:
    """A one-line error for a device the engine cannot use (torch is imported only for a GPU)."""
    if device is None:
        return
    if not DEVICE_RE.match(device):
        raise UserError(f"--device {device!r}: expected cpu, cuda, cuda:N, mps, xpu or auto")
    if engine == "llama.cpp" and device != "cpu":
        raise UserError(f"--device {device}: the llama.cpp engine here is built for the CPU only")
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")


def check_args(args: ServeArgs) -> bool:
    """Check ``args`` before anything loads (one-line errors); returns whether the bind is loopback."""
    if args.engine not in ENGINES:
        raise UserError(f"--engine {args.engine!r}: choose one of {', '.join(ENGINES)}")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: a TCP port is between 1 and 65535")
    for name, value in (("--max-tokens", args.max_tokens), ("--threads", args.threads), ("--n-ctx", args.n_ctx)):
        if value is not None and value < 1:
            raise UserError(f"{name} {value}: must be >= 1")
    if args.timeout_s <= 0:
        raise UserError(f"--timeout {args.timeout_s:g}: must be > 0 seconds")
    loopback = is_loopback(args.host)
    if not loopback and not args.api_key and not args.allow_unauthenticated:
        raise UserError(f"--host {args.host} is not a loopback address: anyone who reaches it could use the "
                        "model; set --api-key (or $PROMPTINTERN_API_KEY), or pass --allow-unauthenticated")
    check_device(args.engine, args.device)
    check_port(args.host, args.port)
    return loopback


def served_model(path: Path, engine: str) -> Path:
    """What the engine loads for ``path``: an HF directory (transformers) or a GGUF file (llama.cpp)."""
    if engine == "transformers":
        return resolve_served_dir(path)
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(ggufs) == 1:
        return ggufs[0].resolve()
    if not path.exists():
        raise RunDirError(f"{path}: no such file or directory (give a .gguf file or a GGUF export)")
    raise RunDirError(f"{path}: the llama.cpp engine serves a .gguf file or a directory with exactly one; "
                      "make one with 'promptintern export --format gguf'")


def default_max_tokens(path: Path) -> int:
    """The cap an export recorded (its run's answer lengths), else :data:`DEFAULT_MAX_TOKENS`."""
    from .io import read_json

    where = Path(path) if Path(path).is_dir() else Path(path).parent
    record = where / SERVING_FILE
    if record.is_file():
        return int(read_json(record).get("max_tokens") or DEFAULT_MAX_TOKENS)
    return DEFAULT_MAX_TOKENS


def worker_env(threads: int, api_key: str | None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: the thread count for every library and process, the key if any."""
    from .serve_worker import API_KEY_ENV
    from .threads import THREADS_ENV, prepare_openmp

    env = dict(os.environ if environ is None else environ)
    prepare_openmp(env)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", THREADS_ENV):
        env[name] = str(threads)
    env.pop(API_KEY_ENV, None)
    if api_key:
        env[API_KEY_ENV] = api_key
    return env


def stop_group(proc: subprocess.Popen, grace_s: float) -> int:
    """SIGTERM to the worker's process group; SIGKILL to whatever is left after ``grace_s``."""
    import contextlib

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        code = None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the model process too, whether or not the worker exited
    return proc.wait() if code is None else code


def serve(path: Path, args: ServeArgs, announce: Any = print, grace_s: float = STOP_GRACE_S) -> None:
    """Serve ``path`` until SIGINT or SIGTERM; ``announce`` receives the one-line notices."""
    from .serve_worker import WorkerSpec
    from .threads import resolve_threads

    args.api_key = args.api_key or os.environ.get("PROMPTINTERN_API_KEY") or None
    loopback = check_args(args)
    if args.engine == "transformers":
        from transformers.utils.import_utils import is_serve_available

        if not is_serve_available():
            raise ServerMissing("the server needs the serving extra: pip install 'promptintern[serve]'")
    elif not _has_llama_cpp():
        raise ServerMissing("the llama.cpp engine needs llama-cpp-python: pip install 'promptintern[gguf]'")
    model = served_model(path, args.engine)
    cap = args.max_tokens or default_max_tokens(model)
    threads = args.threads or resolve_threads()
    if not loopback:
        announce(f"warning: listening on {args.host}, reachable from other machines"
                 + ("" if args.api_key else " WITHOUT an API key"))
    spec = WorkerSpec(engine=args.engine, model=str(model), host=args.host, port=args.port, threads=threads,
                      max_tokens=cap, timeout_s=args.timeout_s, device=args.device or _default_device(args.engine),
                      log_level=args.log_level, n_ctx=args.n_ctx)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "promptintern.serve_worker", spec.to_json()],
                                env=worker_env(threads, args.api_key), start_new_session=True)
        try:
            announce(f"serving {model} with {args.engine} at {args.url()} (model id: {model}; max_tokens cap {cap}; "
                     f"{threads} thread(s)); Ctrl+C or SIGTERM stops it")
            _watch(proc, args, stop, announce)
        finally:
            code = stop_group(proc, grace_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not stop.is_set():
        raise UserError(f"the server stopped by itself (exit code {code}); see the messages above")
    announce("server stopped")


def _watch(proc: subprocess.Popen, args: ServeArgs, stop: threading.Event, announce: Any) -> None:
    """Wait for a stop signal or the worker's end; say ``ready`` once its ``/health`` answers."""
    ready = False
    while not stop.is_set() and proc.poll() is None:
        if not ready and is_healthy(args.health_url()):
            ready = True
            announce(f"ready: {args.url()}")
        stop.wait(0.2 if not ready else 0.5)


def _has_llama_cpp() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _default_device(engine: str) -> str:
    if engine == "llama.cpp":
        return "cpu"
    from .models import default_device

    return default_device()
