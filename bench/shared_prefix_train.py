"""Whole training runs with and without the shared prefix: wall time per method and peak memory.

    python bench/shared_prefix_train.py [--jobs demo-auto,demo-off,...]     # resumable: finished jobs are skipped

Each job is one ``promptintern`` command (``run`` for the demo, ``train`` for the benchmark tasks'
run blocks with the benchmark's per-method settings) under ``/usr/bin/time -v``, so its peak
resident memory is the kernel's figure for the whole process. Results append to
``bench/results/shared-prefix/train.jsonl`` with the command, wall time, peak memory, the stages'
training seconds and token accounting from history.json, and (demo) the final metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "shared-prefix"
BENCH = {"nl2bash": ROOT / "bench/configs/nl2bash.yaml", "mbpp": ROOT / "bench/configs/mbpp.yaml"}


def _jobs() -> dict[str, tuple[str, str, list[str]]]:
    """name -> (command, config path, --set items)."""
    jobs = {f"demo-{sp}": ("run", str(ROOT / "configs/demo.yaml"),
                           [f"train.shared_prefix={sp}", f"output_dir=runs/sp-demo-{sp}"]) for sp in ("auto", "off")}
    for task, path in BENCH.items():
        run_block = Path(tempfile.gettempdir()) / f"sp-{task}.yaml"
        run_block.write_text(yaml.safe_dump(yaml.safe_load(path.read_text())["run"]))
        for method, sp in (("promptintern", "auto"), ("query-only", "auto"), ("promptintern", "off")):
            jobs[f"{task}-{method}-{sp}"] = ("train", str(run_block), [
                f"method={method}", "data.stage_mode=slice", "train.epochs_per_stage=1",
                f"train.shared_prefix={sp}", f"output_dir=runs/sp-{task}-{method}-{sp}"])
    return jobs


def _done(name: str) -> bool:
    path = OUT / "train.jsonl"
    return path.is_file() and any(json.loads(ln).get("job") == name for ln in path.read_text().splitlines() if ln)


def _history(run_dir: Path) -> list[dict]:
    hist = run_dir / "train" / "history.json"
    if not hist.is_file():
        return []
    keep = ("stage", "tau", "k", "steps", "train_loss", "train_wall_s", "s_per_step", "tokens", "peak_rss_mb")
    return [{k: s.get(k) for k in keep} for s in json.loads(hist.read_text()).get("stages", [])]


def run_job(name: str, command: str, config: str, sets: list[str], threads: int) -> dict:
    run_dir = ROOT / next(s.split("=", 1)[1] for s in sets if s.startswith("output_dir="))
    argv = [str(ROOT / ".venv/bin/promptintern"), "--threads", str(threads), command, config, "--resume"]
    for item in sets:
        argv += ["--set", item]
    start = time.time()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.time() - start
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rec = {"job": name, "argv": argv[1:], "exit": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_mb": round(int(peak.group(1)) / 1024, 1) if peak else None, "stages": _history(run_dir)}
    metrics = run_dir / "metrics.json"
    if command == "run" and metrics.is_file():
        m = json.loads(metrics.read_text())
        rec["metrics"] = {k: {"metric": v.get("metrics"), "ci95": v.get("ci95")} for k, v in m["systems"].items()}
        rec["train"] = m.get("train")
    if proc.returncode:
        rec["stderr_tail"] = proc.stderr[-1500:]
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default=None, help="comma-separated job names (default: all, in order)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    jobs = _jobs()
    names = a.jobs.split(",") if a.jobs else list(jobs)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        if _done(name):
            print(f"{name}: done before, skipped", flush=True)
            continue
        print(f"{name}: running", flush=True)
        rec = run_job(name, *jobs[name], threads=a.threads)
        with open(OUT / "train.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name}: exit {rec['exit']}, {rec['wall_s']} s, peak {rec['peak_rss_mb']} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
