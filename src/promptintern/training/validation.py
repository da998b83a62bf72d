"""Per-stage validation loss, and the choice of the last stage's best checkpoint.

Each stage is scored, once it ends, on validation records built with that stage's own prompt
(the same template rate τ and number of examples k it trained on; the query alone in
PromptIntern's last stage). The score is the Trainer's own ``evaluate()`` over those records
with the answer-only cross-entropy of training (LM head at the answer positions, shared-prefix
pass as configured), whatever the training loss: ``eval_loss`` is the mean over validation
batches of each batch's per-answer-token loss. With ``select_best`` the last stage is also
scored at every checkpoint and ends with the best one (``load_best_model_at_end``).

Scoring must not change what training does: it runs in eval mode (no dropout) and with every
random stream training draws from (Python, NumPy, torch CPU and CUDA) saved before and
restored after it, so a run with validation gives the same adapter as one without.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    """Restore the Python, NumPy and torch (CPU, initialised CUDA devices) RNG states on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def stage_validation(trainer: Any, data: list[dict[str, list[int]]], select_best: bool) -> dict[str, Any]:
    """The validation entries of a stage's history: ``validation_loss`` and ``n_validation``, and
    with ``select_best`` the checkpoint step the stage ended with (``best_step``). ``{}`` without data."""
    if not data:
        return {}
    t0 = time.perf_counter()
    metrics = trainer.evaluate(eval_dataset=data)
    out: dict[str, Any] = {"validation_loss": float(metrics["eval_loss"]), "n_validation": len(data),
                           "validation_wall_s": time.perf_counter() - t0}
    if select_best:
        out["best_step"] = trainer.state.best_global_step
        out["best_validation_loss"] = trainer.state.best_metric
    return out


def early_stopping(patience: int | None) -> list[Any]:
    """The Trainer's own EarlyStoppingCallback for ``train.early_stopping_patience`` (none when off).

    It needs what :func:`promptintern.training.hf._training_arguments` sets with ``select_best``:
    evaluation at every checkpoint, ``metric_for_best_model`` and ``load_best_model_at_end``.
    """
    if patience is None:
        return []
    from transformers import EarlyStoppingCallback

    class ResumableEarlyStopping(EarlyStoppingCallback):
        """EarlyStoppingCallback whose count of scorings without improvement survives a resume.

        The Trainer stores the count in every checkpoint (``stateful_callbacks``) but restores it
        only under ``restore_callback_states_from_checkpoint``, which would also try to restore our
        own bookkeeping there as a callback; without it a resumed stage would count from 0 and stop
        later than the uninterrupted run.
        """

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            super().on_train_begin(args, state, control, **kwargs)
            saved = state.stateful_callbacks.get(type(self).__name__)
            if state.global_step > 0 and isinstance(saved, dict):
                self.early_stopping_patience_counter = int(saved["attributes"]["early_stopping_patience_counter"])

    return [ResumableEarlyStopping(early_stopping_patience=patience)]


def stop_record(state: Any, patience: int | None) -> dict[str, Any]:
    """Why and where a stage ended: ``stopped`` is ``plateau`` when early stopping ended it before
    its cap (``patience`` scorings without improvement), ``cap`` when it ran its epochs / steps;
    ``epochs`` the passes over the stage's records it made (``state.epoch``)."""
    ended_early = patience is not None and state.global_step < state.max_steps
    return {"stopped": "plateau" if ended_early else "cap", "epochs": float(state.epoch or 0.0),
            "max_steps": int(state.max_steps), "patience": patience}
