"""What makes two runs, or two models, the same — computed one way for every guard and cache.

Three identities, each defined once here:

- **a configuration's identity** (:func:`identity_view`, :func:`fingerprint`): every field of a
  config dataclass except those whose metadata marks them ``volatile`` (logging, checkpoint
  cadence, threads, progress: free to change on ``--resume``) and those a class leaves out
  through an ``identity_skip()`` method (the KL fields of a plain cross-entropy run). The run
  directory's guard and the trainer's guard both compare these views, and a refusal names
  the fields that differ (:func:`differences`).
- **a model's or adapter's identity** (:func:`model_identity`, :func:`files_identity`): content
  hashes of whole files — two fine-tunes of one base differ only deep inside their weight
  files. A file's digest is cached under :func:`cache_root` by (size, mtime), so a 500 MB file
  is hashed once, not on every start.
- **the cache root** (:func:`cache_root`): ``$PROMPTINTERN_CACHE`` or the user cache directory;
  models, digests and compression results all live below it.

Imports nothing heavy: a run's identity is checked before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .model_names import classify, recipe

CACHE_ENV = "PROMPTINTERN_CACHE"
_DIGEST_VERSION = 1


def cache_root() -> Path:
    """Root of promptintern's cache: ``$PROMPTINTERN_CACHE`` or the user cache directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("promptintern"))


# ---------------------------------------------------------------- configurations


def identity_view(obj: Any) -> Any:
    """A JSON-ready view of ``obj`` without the fields that do not change a run's results.

    Dataclasses lose their ``volatile`` fields and the names their ``identity_skip()`` returns;
    containers are converted item by item; everything else is returned as it is.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        skip = set(obj.identity_skip()) if hasattr(obj, "identity_skip") else set()
        return {f.name: identity_view(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("volatile") and f.name not in skip}
    if isinstance(obj, dict):
        return {k: identity_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [identity_view(v) for v in obj]
    return obj


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (int keys become strings, tuples lists)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(obj: Any) -> str:
    """A short hash of :func:`identity_view` of ``obj`` (a config dataclass or a plain value)."""
    text = json.dumps(identity_view(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(saved: Any, now: Any, path: str = "") -> list[str]:
    """Dotted paths at which two JSON-like values differ (``[]`` when equal)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(now), key=str):
            if saved.get(key) != now.get(key):
                out += differences(saved.get(key), now.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now) and saved != now:
        return [d for i, (a, b) in enumerate(zip(saved, now, strict=True)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if saved == now else [path or "value"]


def describe_differences(saved: Any, now: Any, limit: int = 3) -> str:
    """``train.learning_rate (0.0002 → 0.001)``, for at most ``limit`` differing fields."""
    paths = differences(saved, now)
    shown = [f"{p} ({_lookup(saved, p)!r} → {_lookup(now, p)!r})" for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more


def _lookup(tree: Any, path: str) -> Any:
    for part in path.split("."):
        name, _, rest = part.partition("[")
        indices = [int(i) for i in rest.rstrip("]").split("][")] if rest else []
        if name:
            if not isinstance(tree, dict) or name not in tree:
                return None
            tree = tree[name]
        for i in indices:
            if not isinstance(tree, list) or i >= len(tree):
                return None
            tree = tree[i]
    return tree


# ---------------------------------------------------------------- files and models


def file_digest(path: Path) -> str:
    """SHA-256 of a whole file, cached by (resolved path, size, mtime) under the cache root."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"v": _DIGEST_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = cache_root() / "digests" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text(encoding="utf-8"))
        if {k: cached.get(k) for k in stamp} == stamp:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        from .io import write_json

        write_json(entry, {**stamp, "path": str(path), "sha256": digest})
    except OSError:  # an unwritable cache costs time, never correctness
        pass
    return digest


def files_identity(kind: str, files: Iterable[Path], parts: Sequence[str] = ()) -> str:
    """A short hash of ``kind``, extra ``parts`` and each file's name and whole content."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(part.encode())
    for f in files:
        h.update(f"{Path(f).name}:{file_digest(Path(f))}".encode())
    return h.hexdigest()[:16]


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")


def directory_files(root: Path, head: Sequence[str] = ("config.json",)) -> list[Path]:
    """The files that define a model directory: ``head`` files that exist, then its weights."""
    root = Path(root)
    files = [root / name for name in head if (root / name).is_file()]
    for pattern in WEIGHT_PATTERNS:
        files += sorted(root.glob(pattern))
    return files


def model_identity(name_or_path: str | os.PathLike[str]) -> str:
    """A short stable hash naming a model's weights (for resume guards and output caches).

    Aliases hash their build recipe (no build needed); hub ids hash the id; a model
    directory hashes config.json and the whole content of every weight file; a PEFT adapter
    directory hashes its config and weights plus the identity of the base model it names.
    """
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return adapter_identity(path)
    kind, value = classify(name_or_path)
    if kind == "alias":
        return files_identity(kind, [], [json.dumps(recipe(value), sort_keys=True)])
    if kind == "hub":
        return files_identity(kind, [], [value])
    return files_identity("dir", directory_files(Path(value)))


def adapter_identity(adapter_dir: Path, base_model: str | None = None) -> str:
    """A PEFT adapter's identity: its config and weights, plus its base model's identity.

    ``base_model`` defaults to the ``base_model_name_or_path`` the adapter's config names.
    """
    root = Path(adapter_dir)
    if base_model is None:
        config = json.loads((root / "adapter_config.json").read_text(encoding="utf-8"))
        base_model = config.get("base_model_name_or_path") or ""
    base = model_identity(base_model) if base_model else ""
    return files_identity("adapter", [root / "adapter_config.json", *sorted(root.glob("adapter_model.*"))], [base])


__all__ = [
    "CACHE_ENV", "adapter_identity", "as_json", "cache_root", "describe_differences", "differences",
    "directory_files", "file_digest", "files_identity", "fingerprint", "identity_view", "model_identity",
]
