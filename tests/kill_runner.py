"""Run the promptintern CLI and SIGKILL the process at a named point (for the interruption tests);
points ``sigterm`` and ``sigint`` send that signal instead, mid-step, and let the process stop itself.

Usage: python kill_runner.py POINT CLI-ARGS...  The kill is injected by wrapping a library
function, so the process dies exactly where a real crash could, with no test hook in the product.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(obj, name: str, when=lambda *a, **k: True) -> None:
    """Make ``obj.name`` call through and then SIGKILL the process when ``when(...)`` holds."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        if when(*args, **kwargs):
            die()
        return out

    setattr(obj, name, wrapper)


def install(point: str) -> None:
    if point == "conversion":  # weights written, marker and rename not yet done
        import promptintern.models as m

        after(m, "_save_with_tokenizer")
    elif point == "retriever":  # index files written into the temp dir, not yet renamed
        import bm25s

        after(bm25s.BM25, "save")
    elif point == "stages":  # stage-0 written, stage-1 and the fingerprints not
        import promptintern.stages as st

        after(st, "write_jsonl")
    elif point == "mid-stage":  # first in-stage checkpoint of stage 1 saved
        from transformers import Trainer

        after(Trainer, "_save_checkpoint", lambda self, *a, **k: "stage-1" in str(self.args.output_dir))
    elif point == "between-stages":  # stage 0 complete (final/ renamed into place), stage 1 not begun
        import promptintern.training.loop as tr

        original = tr.atomic_dir

        @contextlib.contextmanager
        def atomic_dir(path):
            with original(path) as tmp:
                yield tmp
            if path.name == "final" and path.parent.name == "stage-0":
                die()

        tr.atomic_dir = atomic_dir
    elif point == "inference":  # the first batch of predictions appended to the partial file
        import promptintern.inference as inf

        after(inf, "_append_rows")
    elif point in ("sigterm", "sigint"):  # a stop requested during stage 1's second step (no checkpoint due)
        from transformers import Trainer

        signum = signal.SIGTERM if point == "sigterm" else signal.SIGINT
        original = Trainer.training_step

        def training_step(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            if "stage-1" in str(self.args.output_dir) and self.state.global_step == 1:
                os.kill(os.getpid(), signum)
            return out

        Trainer.training_step = training_step
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from promptintern.cli import main

    sys.exit(main(sys.argv[2:]))
