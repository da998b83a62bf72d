"""The teacher of the ``kl`` stage losses: which model gives the targets, and their cache on disk.

The teacher sees the stage-0 prompt (full template + K retrieved examples + query), the
student the stage's own prompt; both are teacher-forced on the same gold answer, whose token
ids come from the same ``encode_chat`` suffix, so answer position ``j`` of the student and of
the teacher predict the same token. The loss (:func:`.loss.distill_loss`) compares their
next-token distributions there; the teacher gives its side reduced to top-k logits and the
tail's logsumexp (:class:`.loss.TeacherTargets`).

The teacher is the student itself (``self``: its current adapter, eval mode, no gradient) or a
frozen adapter / model directory, named by :func:`teacher_fingerprint`.

Teacher cache (frozen teachers only; a self-teacher's weights change every step): one
safetensors file per instance, ``run_dir/train/teacher-cache/<key[:2]>/<key>.safetensors``
holding ``indices`` (int32 [n, k]), ``logits`` (float32 [n, k], already divided by T) and
``tail_lse`` (float32 [n]) for the n answer positions. ``key`` hashes the teacher fingerprint
(base model fingerprint + adapter / model weights), the teacher's prompt+answer ids, the
answer-token count, k and T. Every process writes the rows it computed, atomically.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..args import SELF_TEACHER, teacher_kind
from ..io import atomic_path
from ..prompt import IGNORE_INDEX
from .loss import TeacherTargets, answer_logits, topk_targets

CACHE_DIR = "teacher-cache"


def teacher_fingerprint(teacher: str, model_name: str) -> str:
    """A hash naming a frozen teacher's weights (whole-file content hashes, see ``promptintern.identity``).

    An adapter teacher is named together with the student's base model it is applied to.
    """
    from ..identity import adapter_identity, model_identity

    kind = teacher_kind(teacher)
    if kind == "self":
        return SELF_TEACHER
    root = Path(teacher).expanduser()
    return adapter_identity(root, base_model=model_name) if kind == "adapter" else model_identity(root)


def frozen_teacher_fingerprint(args: Any, model_name: str) -> str | None:
    """The fingerprint of ``args``' frozen KL teacher (``train.teacher``), None when no frozen teacher is used."""
    frozen = args.frozen_teacher()
    return teacher_fingerprint(frozen, model_name) if frozen else None


def check_teacher_base(teacher: str, model_name: str) -> None:
    """Refuse an adapter teacher made for another base model than the student's: applied to the
    student's base it would be a different model from the one that was trained (and answered)."""
    import json

    from ..errors import ModelError
    from ..identity import model_identity
    from ..models import resolve_model_path

    root = Path(teacher).expanduser()
    if teacher_kind(teacher) != "adapter":
        return
    base = json.loads((root / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        return
    student = resolve_model_path(model_name)
    if base in (student, model_name):
        return
    same = Path(base).is_dir() and Path(student).is_dir() and (
        Path(base).resolve() == Path(student).resolve() or model_identity(base) == model_identity(student))
    if not same:
        raise ModelError(f"train.teacher {teacher}: an adapter of the base model {base}, but this run's model is "
                         f"{model_name}; give an adapter trained on {model_name}, or a merged model directory")


def load_frozen_teacher(teacher: str, model_name: str, dtype: torch.dtype) -> Any:
    """The frozen teacher model (an adapter on the student's base, loaded as it is served:
    merged only where that is exact, see :func:`promptintern.inference.load_for_serving`),
    eval mode, no gradients, on the CPU."""
    from ..inference import load_for_serving
    from ..models import load_model

    kind = teacher_kind(teacher)
    path = str(Path(teacher).expanduser())
    if kind == "adapter":
        model, _ = load_for_serving(model_name, Path(path), device="cpu", dtype=dtype)
    else:
        model, _ = load_model(path, dtype=dtype, device="cpu")
    model.eval().requires_grad_(False)
    return model


@dataclass
class TeacherCache:
    """Per-instance teacher targets on disk (see the module docstring for the layout)."""

    root: Path
    fingerprint: str
    topk: int
    temperature: float

    def key(self, teacher_ids: Sequence[int], n_answer: int) -> str:
        h = hashlib.sha256(f"{self.fingerprint}|k={self.topk}|T={self.temperature!r}|n={n_answer}|".encode())
        h.update(torch.tensor(list(teacher_ids), dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> TeacherTargets | None:
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        t = load_file(str(path))
        return TeacherTargets(t["indices"].long(), t["logits"], t["tail_lse"])

    def put(self, key: str, targets: TeacherTargets) -> None:
        from safetensors.torch import save_file

        tensors = {"indices": targets.indices.to("cpu", torch.int32).contiguous(),
                   "logits": targets.logits.cpu().contiguous(), "tail_lse": targets.tail_lse.cpu().contiguous()}
        with atomic_path(self.path(key)) as tmp:
            save_file(tensors, str(tmp))


@dataclass
class Teacher:
    """Where the KL targets come from, with the time and work they cost.

    ``model`` is None for self-distillation: the student itself, under its current adapter,
    in eval mode (no dropout) and without gradient. ``cache`` only for a frozen ``model``.
    """

    model: Any
    topk: int
    temperature: float
    cache: TeacherCache | None = None
    shared_prefix: str = "off"  # set by the trainer from train.shared_prefix
    wall_s: float = 0.0
    rows_computed: int = 0
    cache_hits: int = 0
    _placed: Any = field(default=None, repr=False)

    def stats(self) -> dict[str, float | int]:
        return {"teacher_wall_s": self.wall_s, "teacher_rows": self.rows_computed,
                "teacher_cache_hits": self.cache_hits}

    def _forward(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> TeacherTargets:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits, _ = answer_logits(model, ids, mask, labels, shared_prefix=self.shared_prefix)
                return topk_targets(logits, self.topk, self.temperature)
        finally:
            model.train(was_training)

    def targets(self, student: Any, inputs: dict[str, torch.Tensor]) -> TeacherTargets:
        """Targets for the batch's answer positions, in the student's (row-major) order.

        ``student`` is the unwrapped student model (used when distilling from itself).
        """
        ids, mask = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
        labels = inputs["teacher_labels"]
        start = time.perf_counter()
        model = self.model if self.model is not None else student
        if self.model is not None and self._placed != ids.device:
            self.model.to(ids.device)
            self._placed = ids.device
        if self.cache is None:
            out = self._forward(model, ids, mask, labels)
            self.rows_computed += ids.shape[0]
        else:
            out = self._cached(model, ids, mask, labels)
        if out.indices.is_cuda:
            torch.cuda.synchronize(out.indices.device)  # count the teacher's GPU time, not its launch
        self.wall_s += time.perf_counter() - start
        return out

    def _cached(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> TeacherTargets:
        cache = self.cache
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1).tolist()
        lengths = mask.sum(-1).tolist()
        keys = [cache.key(row[:n].tolist(), c) for row, n, c in zip(ids, lengths, counts, strict=True)]
        rows: list[TeacherTargets | None] = [cache.get(k) for k in keys]
        missing = [r for r, t in enumerate(rows) if t is None]
        self.cache_hits += len(rows) - len(missing)
        if missing:
            if len(missing) == len(rows):  # the uncached computation, exactly
                computed = self._forward(model, ids, mask, labels)
            else:
                sel = torch.tensor(missing, device=ids.device)
                computed = self._forward(model, ids[sel], mask[sel], labels[sel])
            self.rows_computed += len(missing)
            for r, part in zip(missing, computed.split([counts[r] for r in missing]), strict=True):
                part = TeacherTargets(part.indices.cpu(), part.logits.cpu(), part.tail_lse.cpu())
                cache.put(keys[r], part)
                rows[r] = part
        return TeacherTargets.cat([r for r in rows if r is not None]).to(ids.device)
