"""Where a training step's memory goes: one stage-0 batch of a config, forward + backward, in one process.

    OMP_NUM_THREADS=1 python bench/shared_prefix_memory.py configs/demo.yaml [--mode auto|off] [--steps 2]
        [--set lora.dropout=0] [--attn eager|sdpa] [--checkpointing] [--profile] [--layers 2]

Builds the config's stage-0 batches as training does (library functions, via shared_prefix_speed),
takes the widest one (it sets the peak), loads the LoRA model and runs ``--steps`` forward + backward
passes (the second is the steady state). Prints one JSON line per step:

- ``hwm_mb``: the process's resident peak during the step (Linux VmHWM, reset before the step by
  writing 5 to /proc/self/clear_refs), ``rss_before_mb`` / ``rss_after_mb`` around it;
- ``saved_mb``: bytes autograd keeps for the backward pass at the end of the forward (unique
  storages, parameters left out) -- the live activations;
- with ``--profile``: ``peak_live_mb``, the peak of live tensor bytes allocated during the step
  (torch profiler memory events, relative to the step's start), and ``kept_by_op_mb``, the ops
  whose outputs outlive them (self CPU memory over the step: what the forward ops allocate for
  the backward, largest first).

RSS well above the model plus ``peak_live_mb`` is allocator overhead (freed memory not returned to
the system, fragmentation). Nothing here re-implements training: batches, model, loss come from
the library; ``--checkpointing`` calls transformers' ``activation_checkpointing_enable`` as the
Trainer does for ``train.extra.activation_checkpointing``.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from shared_prefix_speed import _batches, _run_block  # noqa: E402


def _model(cfg, layers: int | None):
    """The LoRA model as the benchmarks build it; ``layers`` keeps only the first decoder layers
    (every layer has the same shapes, so per-layer activation bytes scale to the whole model)."""
    from peft import get_peft_model

    from promptintern.models import load_model

    base, _ = load_model(cfg.model, device="cpu")
    if layers is not None:
        base.model.layers = base.model.layers[:layers]
        base.config.num_hidden_layers = layers
    model = get_peft_model(base, cfg.lora.to_peft())
    model.train()
    return model


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def _trim() -> None:
    """Return freed heap memory to the system (glibc), so a step's peak starts from live memory."""
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _saved_tensors(model, counter: dict[int, int]):
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            counter[ptr] = t.untyped_storage().nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def _peak_live(prof) -> float:
    """Peak of live bytes (allocations minus frees, in time order) over the profiled span, in MB."""
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return round(peak / 2**20, 1)


def _step(model, batch, mode: str, profile: bool) -> dict:
    import contextlib

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from promptintern.training import answer_loss

    _trim()
    rss_before = _status_mb("VmRSS")
    _reset_peak()
    saved: dict[int, int] = {}
    prof_cm = torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) if profile else None
    t, c = time.perf_counter(), time.process_time()
    with prof_cm if prof_cm is not None else contextlib.nullcontext():
        with _saved_tensors(model, saved):
            loss = answer_loss(model, batch, shared_prefix=mode)
        fwd_hwm = _status_mb("VmHWM")
        loss.backward()
    out = {"loss": round(float(loss.detach()), 6), "wall_s": round(time.perf_counter() - t, 1),
           "cpu_s": round(time.process_time() - c, 1), "rss_before_mb": rss_before,
           "forward_hwm_mb": fwd_hwm, "hwm_mb": _status_mb("VmHWM"), "rss_after_mb": _status_mb("VmRSS"),
           "saved_mb": round(sum(saved.values()) / 2**20, 1)}
    if prof_cm is not None:
        out["peak_live_mb"] = _peak_live(prof_cm)
        ops = sorted(prof_cm.key_averages(), key=lambda e: e.self_cpu_memory_usage, reverse=True)[:12]
        out["kept_by_op_mb"] = {e.key: round(e.self_cpu_memory_usage / 2**20, 1) for e in ops}
    model.zero_grad(set_to_none=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--mode", choices=("auto", "off"), default="auto")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--attn", choices=("eager", "sdpa"), default=None, help="attention implementation (default: as loaded)")
    p.add_argument("--checkpointing", action="store_true", help="transformers' activation checkpointing (non-reentrant)")
    p.add_argument("--profile", action="store_true", help="torch profiler memory events (slower)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=None, help="keep only the first N decoder layers (a small process)")
    a = p.parse_args(argv)

    import torch

    from promptintern.config import load_config

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = load_config(_run_block(a.config), a.set)
    batches = _batches(cfg, 10**6, cfg.train.seed)  # all of stage 0
    batch = max(batches, key=lambda b: b["input_ids"].numel())
    del batches
    _trim()
    head = {"config": a.config, "set": a.set, "layers": a.layers, "mode": a.mode, "attn": a.attn, "checkpointing": a.checkpointing,
            "threads": a.threads, "batch": list(batch["input_ids"].shape),
            "rss_after_batches_mb": _status_mb("VmRSS"), "hwm_after_batches_mb": _status_mb("VmHWM")}
    model = _model(cfg, a.layers)
    if a.attn:
        model.get_base_model().set_attn_implementation(a.attn)
    if a.checkpointing:
        model.activation_checkpointing_enable()
    head["attn_loaded"] = model.get_base_model().config._attn_implementation
    _trim()
    head["rss_after_model_mb"] = _status_mb("VmRSS")
    print(json.dumps(head), flush=True)
    for i in range(a.steps):
        print(json.dumps({"step": i, **_step(model, batch, a.mode, a.profile)}), flush=True)
    scale = 1 if sys.platform == "darwin" else 1024
    print(json.dumps({"ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
