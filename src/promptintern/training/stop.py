"""A clean stop on SIGTERM / SIGINT: the stage saves a checkpoint at the step it is on and the
process exits with one line; ``--resume`` continues from that checkpoint, bit for bit.

A service manager's stop (SIGTERM) or a Ctrl-C would otherwise lose every step since the last
``save_steps`` checkpoint. The handler only records the signal; the Trainer acts on it at the
end of the current step (``should_save`` + ``should_training_stop``), where a checkpoint is
complete and consistent. A second signal stops at once (KeyboardInterrupt), as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class StopRequest:
    """The signal received while training, if any."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    """Record SIGTERM / SIGINT in the yielded :class:`StopRequest` while the block runs.

    Only the main thread can install handlers; elsewhere, and when not ``enabled`` (several
    processes, which could each see the signal at another step and wait on each other's save
    forever), the signals keep their behaviour.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: Any) -> None:
        if request.signum is not None:  # asked twice: stop now
            raise KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handle) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_callback(request: StopRequest) -> Any:
    """A ``TrainerCallback`` that saves a checkpoint and ends the stage once a stop is requested."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if request.signum is not None:
                control.should_save = True
                control.should_training_stop = True

    return StopOnSignal()
