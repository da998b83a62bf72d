"""Run the promptintern CLI as one process of a multi-process launch, recording the adapter.

Usage: torchrun --nproc_per_node 2 tests/ddp_cli_runner.py HASH_DIR CLI-ARGS...  After every
stage's ``Trainer.train`` the process writes the hash of its in-memory adapter to
``HASH_DIR/rank-<RANK>.txt`` (so the test sees each rank's final weights, not only the
main process's saved file). The product code runs unchanged; only ``Trainer.train`` is wrapped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from train_fixtures import adapter_hash


def install(hash_dir: Path) -> None:
    from transformers import Trainer

    original = Trainer.train

    def train(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        hash_dir.mkdir(parents=True, exist_ok=True)
        (hash_dir / f"rank-{os.environ.get('RANK', '0')}.txt").write_text(adapter_hash(self.model))
        return out

    Trainer.train = train


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    from promptintern.cli import main

    sys.exit(main(sys.argv[2:]))
