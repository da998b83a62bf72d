"""One line naming the machine a measurement ran on (stored beside every timing)."""

from __future__ import annotations

import os
import platform
from typing import Any


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(model: Any = None) -> str:
    """CPU (or GPU), cores, torch threads, torch version and the model's dtype."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [f"{_cpu_name()}, {cores} cores ({torch.get_num_threads()} torch threads)"]
    if model is not None and getattr(model.device, "type", "") == "cuda":
        parts.append(torch.cuda.get_device_name(model.device))
    parts.append(f"torch {torch.__version__}")
    if model is not None:
        parts.append(str(next(model.parameters()).dtype).removeprefix("torch."))
    return ", ".join(parts)
