"""The server process that ``promptintern serve`` supervises: one engine behind the gate.

Run as ``python -m promptintern.serve_worker SPEC`` (a JSON :class:`WorkerSpec`); the API key
comes in ``$PROMPTINTERN_API_KEY`` so that it never shows in ``ps``. Why a child process: the
supervisor (:mod:`promptintern.serve`) must be able to end in-flight work in bounded time and
``transformers serve`` generates in a grandchild it starts itself; one process group that the
supervisor can kill covers both, and the thread settings reach every process through the
environment it is started with.

Engines:

- ``transformers``: ``transformers serve`` pinned to a local HF directory. It builds its FastAPI
  app inside ``Serve.run`` with no hook to add middleware, so :func:`_guard_transformers` wraps
  the module's ``build_server`` (the function it calls to build the app) to put the app behind
  :func:`promptintern.serve_guard.guarded`; nothing else of the library is changed.
- ``llama.cpp``: llama-cpp-python's OpenAI-compatible app (``llama_cpp.server.app.create_app``)
  on one GGUF file, run by uvicorn behind the same gate, with its own API key check as well.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

from .serve_guard import GuardSettings, guarded

API_KEY_ENV = "PROMPTINTERN_API_KEY"


@dataclass(frozen=True)
class WorkerSpec:
    """What the worker serves and how (built by the supervisor, passed as JSON)."""

    engine: str
    model: str
    host: str
    port: int
    threads: int
    max_tokens: int
    timeout_s: float
    device: str = "cpu"
    log_level: str = "warning"
    n_ctx: int = 2048
    parallel: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def _guard(spec: WorkerSpec) -> GuardSettings:
    llama = spec.engine == "llama.cpp"
    return GuardSettings(max_tokens=spec.max_tokens, api_key=os.environ.get(API_KEY_ENV) or None,
                         timeout_s=spec.timeout_s, answer_health=llama,
                         defaults=(("repeat_penalty", 1.0),) if llama else ())


def _guard_transformers(settings: GuardSettings) -> None:
    import transformers.cli.serving.server as server_module

    build = server_module.build_server

    def build_guarded(*args, **kwargs):
        return guarded(build(*args, **kwargs), settings)

    server_module.build_server = build_guarded


def run_transformers(spec: WorkerSpec) -> None:
    import torch
    from transformers.cli.serve import Serve

    torch.set_num_threads(spec.threads)
    _guard_transformers(_guard(spec))
    Serve(force_model=spec.model, host=spec.host, port=spec.port, device=spec.device, log_level=spec.log_level)


def run_llama_cpp(spec: WorkerSpec) -> None:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    settings = _guard(spec)
    model = ModelSettings(model=spec.model, model_alias=spec.model, n_threads=spec.threads,
                          n_threads_batch=spec.threads, n_ctx=spec.n_ctx, n_gpu_layers=0, verbose=False)
    server = ServerSettings(host=spec.host, port=spec.port, api_key=settings.api_key)
    app = create_app(server_settings=server, model_settings=[model])
    uvicorn.run(guarded(app, settings), host=spec.host, port=spec.port, log_level=spec.log_level,
                timeout_graceful_shutdown=2)


def main(argv: list[str]) -> int:
    """Run the engine; a failure to start (a corrupt model file, say) is one line unless debugging."""
    spec = WorkerSpec(**json.loads(argv[0]))
    try:
        {"transformers": run_transformers, "llama.cpp": run_llama_cpp}[spec.engine](spec)
    except Exception as exc:
        if os.environ.get("PROMPTINTERN_DEBUG"):
            raise
        print(f"promptintern serve: error: {spec.engine} could not serve {spec.model}: "
              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
