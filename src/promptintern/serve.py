"""``promptintern serve``: an OpenAI-compatible chat-completions endpoint for a trained run.

The server is ``transformers serve`` (FastAPI + uvicorn, from the ``transformers[serving]``
extra of the transformers we already depend on), run in this process with the model pinned:
it loads a local directory offline, runs on the CPU, answers ``POST /v1/chat/completions``
(streaming or not) through the tokenizer's chat template, and lists the model on
``GET /v1/models``. Nothing here parses HTTP.

What is served:

- a merged export (``promptintern export --merge``) or any HF model directory: as is;
- a run directory: its adapter merged into the base in fp32 (the same weights ``infer``
  serves on the CPU) and exported once into ``<cache>/serve/<fingerprint>/model``; the
  fingerprint covers the adapter, the run config and the base weights, so a retrained run
  is re-exported and an unchanged one is reused;
- an adapter-only export is refused: ``transformers serve`` loads full models only (vLLM's
  ``--enable-lora`` serves adapters; see the README).

The export's chat template carries the method's served prompt (:mod:`promptintern.exporter`),
so clients send the raw query. The model id clients must name is the served directory's path
(``GET /v1/models`` lists it; a request without ``model`` gets it too).

Stopping: uvicorn shuts down gracefully on SIGINT and SIGTERM and then re-raises the signal;
both are caught here so the command returns 0 after a clean shutdown.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RunDirError, UserError

EXPORT_VERSION = 1  # bump when the serving export changes, so cached exports are rebuilt


@dataclass
class ServeArgs:
    """Where and how ``promptintern serve`` listens."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (loopback by default; 0.0.0.0 exposes it)."})
    port: int = field(default=8000, metadata={"help": "TCP port to listen on."})
    device: str | None = field(default=None, metadata={"help": "Torch device (default: a GPU when visible, else the CPU)."})
    log_level: str = field(default="warning", metadata={"help": "transformers log level inside the server."})

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


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


class _Stop(Exception):
    """Raised by the SIGTERM handler once the server has shut down (or before it started)."""


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


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def serve(path: Path, args: ServeArgs, announce: Any = print) -> None:
    """Serve ``path`` until SIGINT or SIGTERM; ``announce`` receives the one-line URL notice."""
    from transformers.utils.import_utils import is_serve_available

    from .models import default_device

    if not is_serve_available():
        raise ServerMissing("the server needs the serving extra: pip install 'promptintern[serve]'")
    check_port(args.host, args.port)
    model_dir = resolve_served_dir(path)
    from transformers.cli.serve import Serve

    announce(f"serving {model_dir} at {args.url()} (model id: {model_dir}); Ctrl+C or SIGTERM stops it")
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        Serve(force_model=str(model_dir), host=args.host, port=args.port, device=args.device or default_device(),
              log_level=args.log_level)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    announce("server stopped")
