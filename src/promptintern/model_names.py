"""What a model name means — a built-in alias, a local HF directory or a hub id — without torch.

Run and model identities (:mod:`.identity`) need to classify a model name and know an alias's build
recipe, and model loading (:mod:`.models`, which imports torch) needs the same; both import it from
here, so neither imports the other and checking a config stays fast.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import ModelError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
RECIPE_VERSION = 1  # bump when a build recipe changes: old cache entries then count as absent
TINY_RANDOM_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # 5x the usual init spread: greedy outputs then differ per prompt instead of repeating one
    # token, so tests that compare predictions (batched vs unbatched, resumed vs not) can fail.
    "initializer_range": 0.1,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}
TINY_RANDOM_SEED = 0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALIASES = ("smollm2-135m", "tiny-random")


def looks_like_path(name: str) -> bool:
    """Whether a name that does not exist was meant as a path (so the error names a missing directory)."""
    return name.startswith(("/", ".", "~")) or name.endswith(("/", os.sep)) or "\\" in name or name.count("/") > 1


def classify(name_or_path: str | os.PathLike[str]) -> tuple[str, str]:
    """``("alias"|"dir"|"hub", value)`` for a model name, or a :class:`ModelError`."""
    name = str(name_or_path)
    if name in ALIASES:
        return "alias", name
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model {name!r} is a file; expected an HF model directory (with config.json)")
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory {name!r} has no config.json; is it an HF model directory?")
        return "dir", str(path.resolve())
    if looks_like_path(name):
        raise ModelError(f"model directory {name!r} does not exist")
    if HUB_ID.match(name):
        return "hub", name
    raise ModelError(
        f"unknown model {name!r}; use an alias ({', '.join(ALIASES)}), an HF model directory or a hub id org/name"
    )


def recipe(alias: str) -> dict[str, Any]:
    """What a cached alias is built from; a cache entry with another recipe is rebuilt."""
    out: dict[str, Any] = {"alias": alias, "version": RECIPE_VERSION, "gguf": GGUF_FILE}
    if alias == "tiny-random":
        out.update(config=TINY_RANDOM_CONFIG, seed=TINY_RANDOM_SEED)
    return out
