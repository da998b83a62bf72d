"""Finished benchmark methods kept with the results, so a benchmark resumes on another machine.

A method's run directory (``bench/runs/``, git-ignored: adapters, checkpoints, caches) is lost
with the machine, and a benchmark at default scale can outlast one working session. What the
results need from a finished method is small — ``bench.json``, ``metrics.json`` (per-item
scores), the scored predictions, the latency predictions and the training history — so it is
copied to ``bench/results/<stem>-methods/<method>/`` (committed) when the method finishes, and
copied back into an empty run directory when the benchmark runs again elsewhere. Adapters are
not kept: a method that serves or distils another method's adapter needs that method's run
directory, and says so.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptintern.io import atomic_path, read_json

BENCH_FILE = "bench.json"
KEPT = ("metrics.json", "train/history.json", "predictions/latency-b1.jsonl")


def _copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


@dataclass(frozen=True)
class Ledger:
    """``root``/<method>/ holds a finished method's results files; ``root`` None keeps nothing."""

    root: Path | None

    def files(self, entry: dict[str, Any], name: str) -> list[str]:
        """The run-directory files of ``name`` the results are computed from (``bench.json`` last)."""
        own = [entry["items"]["predictions"]] if entry.get("items", {}).get("method") == name else []
        return [*dict.fromkeys([*KEPT, *own]), BENCH_FILE]

    def save(self, name: str, run_dir: Path, entry: dict[str, Any]) -> None:
        """Copy a finished method's results files out of ``run_dir`` (``bench.json`` last: it marks done)."""
        if self.root is None:
            return
        (self.root / name / BENCH_FILE).unlink(missing_ok=True)
        for rel in self.files(entry, name):
            if (run_dir / rel).is_file():
                _copy(run_dir / rel, self.root / name / rel)

    def restore(self, name: str, run_dir: Path, fingerprint: str) -> dict[str, Any] | None:
        """Copy ``name``'s kept files into a run directory without ``bench.json``; its entry, or None.

        Only an entry measured under ``fingerprint`` (the same config and bench settings) counts.
        """
        if self.root is None or (run_dir / BENCH_FILE).is_file():
            return None
        kept = self.root / name / BENCH_FILE
        if not kept.is_file():
            return None
        entry = read_json(kept)
        if entry.get("fingerprint") != fingerprint:
            return None
        for rel in self.files(entry, name):
            if (self.root / name / rel).is_file():
                _copy(self.root / name / rel, run_dir / rel)
        return entry
