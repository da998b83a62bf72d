"""One NL2Bash stage-0 batch (benchmark config, batch 4) with the shared prefix, then without, then with
again, in one process, under torch's profiler: where a step's CPU time goes.

    OMP_NUM_THREADS=2 python bench/shared_prefix_profile.py 2      # the argument: torch threads

The first step of a process is dominated by first-touch page faults on freshly allocated
activations (elementwise ops such as mul, fill_ and add_ take several times longer than later);
the third call shows the shared path at steady state, next to the plain path's.
"""
import sys
import time

import torch

sys.path.insert(0, "bench")
from shared_prefix_speed import _batches, _model, _run_block
from torch.profiler import ProfilerActivity, profile

from promptintern.config import load_config
from promptintern.training import answer_loss

torch.set_num_threads(int(sys.argv[1]))
cfg = load_config(_run_block("bench/configs/nl2bash.yaml"), [])
b = _batches(cfg, 2, cfg.train.seed)[1]
model = _model(cfg)
for mode in ("auto", "off", "auto"):
    t, c = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        answer_loss(model, b, shared_prefix=mode).backward()
    model.zero_grad(set_to_none=True)
    print(mode, f"wall {time.perf_counter()-t:.1f} cpu {time.process_time()-c:.1f}", flush=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8), flush=True)
