"""What serving refuses before it answers: a damaged adapter, a prompt the model's context cannot
hold, a partial predictions file made by another call.

Each would otherwise end in a traceback or, worse, in answers that look fine: a 100,000-token
query answered (slowly) with garbage, an interrupted ``infer`` resumed under other settings
leaving a file that mixes two configurations.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import DataError, ModelError

# What to do about predictions a resume cannot use, in commands that exist.
RESTART_HINT = "delete the file and rerun (promptintern infer: or pass --no-resume)"

logger = logging.getLogger("promptintern.inference")


def check_adapter(adapter_dir: Path) -> None:
    """Refuse an adapter whose files do not match their checksums (see :mod:`promptintern.checksums`)."""
    from .checksums import directory_problem

    problem = directory_problem(adapter_dir)
    if problem is not None:
        raise ModelError(f"{adapter_dir}: {problem}; {rebuild_hint(adapter_dir)}")


def rebuild_hint(adapter_dir: Path) -> str:
    """What to do about a damaged adapter: a run's is rebuilt from its stages' final/ by a resume."""
    run_dir = Path(adapter_dir).parent
    config = run_dir / "config.yaml"
    if not config.is_file():
        return "restore it from a good copy"
    import yaml

    with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
        made_in = yaml.safe_load(config.read_text(encoding="utf-8")).get("output_dir")
        if Path(made_in).resolve() == run_dir.resolve():
            return f"rebuild it with: promptintern train {config} --resume"
    return f"rebuild it with: promptintern train {config} --resume --set output_dir={run_dir}"


def context_length(model: Any) -> int | None:
    """The most positions the model was built for (None when its config does not say)."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def check_prompt_lengths(seqs: Sequence[Sequence[int]], ids: Sequence[str], model: Any, max_new_tokens: int) -> None:
    """Refuse a prompt that fills the model's context (its answer would be garbage, slowly); warn
    when the answer may run past it."""
    limit = context_length(model)
    if limit is None:
        return
    lengths = [len(s) for s in seqs]
    over = [k for k, n in enumerate(lengths) if n >= limit]
    if over:
        k = max(over, key=lambda i: lengths[i])
        raise DataError(f"query {ids[k]!r}: its prompt is {lengths[k]} tokens, the model's context is {limit} "
                        f"({len(over)} such quer{'y' if len(over) == 1 else 'ies'}); shorten it")
    tight = [k for k, n in enumerate(lengths) if n + max_new_tokens > limit]
    if tight:
        logger.warning("%d quer%s (first %r) leave fewer than max_new_tokens=%d positions of the model's %d-token "
                       "context; their answers may be cut short", len(tight), "y" if len(tight) == 1 else "ies",
                       ids[tight[0]], max_new_tokens, limit)


def settings_path(partial: Path) -> Path:
    """Where :func:`run_inference` records what the partial file's rows were generated with."""
    return partial.with_name(partial.name + ".json")


def check_settings(partial: Path, settings: dict[str, Any] | None) -> None:
    """Refuse a partial file made by another run, other settings or another input."""
    if settings is None or not partial.is_file():
        return
    from .identity import as_json, differences
    from .io import read_json

    where = settings_path(partial)
    saved = read_json(where) if where.is_file() else None
    if saved is None:
        raise DataError(f"{partial}: made without a record of its run and settings, so it cannot be resumed; "
                        "pass --no-resume to discard it")
    diff = differences(saved, as_json(settings))
    if diff:
        raise DataError(f"{partial}: made with a different {', '.join(diff)}; pass --no-resume to discard it, "
                        "or choose another --output")
