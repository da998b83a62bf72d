"""Distilling the full-prompt teacher into the shorter-prompt student (the ``kl`` stage losses).

The teacher sees the stage-0 prompt (full template + K retrieved examples + query), the
student the stage's own prompt; both are teacher-forced on the same gold answer, whose token
ids come from the same ``encode_chat`` suffix, so answer position ``j`` of the student and of
the teacher predict the same token. The loss compares their next-token distributions there.

Estimator (a KL between coarse-grained distributions). Per answer position, with
``p = softmax(z_teacher / T)`` and ``q = softmax(z_student / T)``, let ``S`` be the teacher's
``kl_topk`` most likely tokens and ``R`` the rest of the vocabulary, one bucket::

    KL_k = Σ_{i∈S} p_i log(p_i / q_i) + p_R log(p_R / q_R),   p_R = Σ_{i∉S} p_i,  q_R = Σ_{i∉S} q_i

The teacher keeps only its top-k logits and the logsumexp of the others (``p_R`` is exact, not
``1 − Σ p_S``); the student's logits exist in full at the answer positions anyway (the CE term
needs them), so ``q_R`` is exact too. By the log-sum inequality ``0 ≤ KL − KL_k =
p_R · KL(p|R ‖ q|R)``: the estimate never exceeds the full KL, misses only the mismatch
*inside* the tail, is exact when k covers the vocabulary, and grows towards the full KL as k
grows (the top-k sets are nested). The loss is ``T² · KL_k`` summed over answer tokens and
divided like the cross-entropy (answer tokens of the accumulated batch), so gradients keep
their scale across temperatures (Hinton et al.).

Memory: the LM head runs at the answer positions only for both models (a forward pre-hook on
the output embeddings keeps those rows of the final hidden states), so no full-vocabulary
logits exist for prompt positions; the teacher's answer-position
logits are reduced to top-k + tail logsumexp chunk by chunk and freed.

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
import torch.nn.functional as F

from .args import KL_LOSSES, SELF_TEACHER, teacher_kind
from .errors import ConfigError, DataError
from .io import atomic_path
from .prompt import IGNORE_INDEX
from .training.loss import answer_logits, answer_mask  # noqa: F401  (re-exported: they lived here)
from .training.shared_prefix import (
    BatchTokens,
)

CACHE_DIR = "teacher-cache"
_TOPK_CHUNK = 1024  # answer positions reduced to top-k at a time (bounds the temporary [chunk, V] copies)


# ---------------------------------------------------------------- the estimator


@dataclass
class TeacherTargets:
    """The teacher's reduced distribution at N answer positions (see the module docstring)."""

    indices: torch.Tensor  # [N, k] int64: the teacher's top-k token ids
    logits: torch.Tensor  # [N, k] float32: their logits divided by T
    tail_lse: torch.Tensor  # [N] float32: logsumexp of the other logits / T (-inf when k = V)

    def __len__(self) -> int:
        return self.indices.shape[0]

    def to(self, device: Any) -> TeacherTargets:
        return TeacherTargets(self.indices.to(device), self.logits.to(device), self.tail_lse.to(device))

    def split(self, sizes: Sequence[int]) -> list[TeacherTargets]:
        parts = zip(self.indices.split(list(sizes)), self.logits.split(list(sizes)),
                    self.tail_lse.split(list(sizes)), strict=True)
        return [TeacherTargets(i, v, t) for i, v, t in parts]

    @staticmethod
    def cat(parts: Sequence[TeacherTargets]) -> TeacherTargets:
        return TeacherTargets(torch.cat([p.indices for p in parts]), torch.cat([p.logits for p in parts]),
                              torch.cat([p.tail_lse for p in parts]))


@torch.no_grad()
def topk_targets(logits: torch.Tensor, k: int, temperature: float) -> TeacherTargets:
    """Reduce teacher logits ``[N, V]`` to top-k logits / T plus the logsumexp of the rest."""
    k = min(k, logits.shape[-1])
    idx, vals, tails = [], [], []
    for part in logits.split(_TOPK_CHUNK):
        z = part.float() / temperature
        v, i = z.topk(k, dim=-1)
        if k < z.shape[-1]:
            tail = z.scatter(-1, i, float("-inf")).logsumexp(-1)
        else:
            tail = torch.full(z.shape[:1], float("-inf"), device=z.device)
        idx.append(i)
        vals.append(v)
        tails.append(tail)
    if not idx:  # no answer position
        empty = logits.new_empty((0, k), dtype=torch.float32)
        return TeacherTargets(empty.long(), empty, empty.new_empty((0,)))
    return TeacherTargets(torch.cat(idx), torch.cat(vals), torch.cat(tails))


def bucket_kl(student_logits: torch.Tensor, targets: TeacherTargets, temperature: float) -> torch.Tensor:
    """``KL_k(p_teacher ‖ q_student)`` per answer position ``[N]`` (not yet scaled by T²).

    Both normalisers are assembled the same way (top-k logsumexp ⊕ tail logsumexp), so equal
    logits give exactly zero.
    """
    s = student_logits.float() / temperature
    idx = targets.indices
    s_top = s.gather(-1, idx)
    log_p_top_unnorm = targets.logits
    if idx.shape[-1] < s.shape[-1]:
        s_tail = s.scatter(-1, idx, float("-inf")).logsumexp(-1)
        lse_s = torch.logaddexp(s_top.logsumexp(-1), s_tail)
        lse_t = torch.logaddexp(log_p_top_unnorm.logsumexp(-1), targets.tail_lse)
        log_q_tail, log_p_tail = s_tail - lse_s, targets.tail_lse - lse_t
        tail = log_p_tail.exp() * (log_p_tail - log_q_tail)
    else:  # k covers the vocabulary: no tail bucket
        lse_s, lse_t = s_top.logsumexp(-1), log_p_top_unnorm.logsumexp(-1)
        tail = torch.zeros_like(lse_s)
    log_q_top = s_top - lse_s[:, None]
    log_p_top = log_p_top_unnorm - lse_t[:, None]
    return (log_p_top.exp() * (log_p_top - log_q_top)).sum(-1) + tail


# ---------------------------------------------------------------- teachers


def teacher_fingerprint(teacher: str, model_name: str) -> str:
    """A hash naming a frozen teacher's weights (whole-file content hashes, see ``promptintern.identity``).

    An adapter teacher is named together with the student's base model it is applied to.
    """
    from .identity import adapter_identity, model_identity

    kind = teacher_kind(teacher)
    if kind == "self":
        return SELF_TEACHER
    root = Path(teacher).expanduser()
    return adapter_identity(root, base_model=model_name) if kind == "adapter" else model_identity(root)


def load_frozen_teacher(teacher: str, model_name: str, dtype: torch.dtype) -> Any:
    """The frozen teacher model (an adapter on the student's base, loaded as it is served:
    merged only where that is exact, see :func:`promptintern.inference.load_for_serving`),
    eval mode, no gradients, on the CPU."""
    from .inference import load_for_serving
    from .models import load_model

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


# ---------------------------------------------------------------- the stage loss


@dataclass
class LossParts:
    """The summed (not yet normalised) terms of one batch."""

    ce: torch.Tensor
    kl: torch.Tensor  # T²-scaled
    n_tokens: int


def distill_loss(model: Any, teacher: Teacher, inputs: dict[str, torch.Tensor], *, loss: str,
                 kl_weight: float, student: Any = None, num_items_in_batch: Any = None,
                 shared_prefix: str = "off", tokens: list[BatchTokens] | None = None,
                 ) -> tuple[torch.Tensor, LossParts]:
    """``kl`` = T²·KL_k, ``ce+kl`` = (1 − λ)·CE + λ·T²·KL_k, per answer token of the accumulated batch.

    ``model`` is the (possibly DDP-wrapped) student; ``student`` its unwrapped module for a
    self-teacher (default: ``model``).
    """
    if loss not in KL_LOSSES:
        raise ConfigError(f"train.loss: {loss!r} is not one of {', '.join(KL_LOSSES)}")
    logits, targets = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                    shared_prefix=shared_prefix, tokens=tokens)
    t = teacher.targets(student if student is not None else model, inputs)
    if len(t) != logits.shape[0]:
        raise DataError(f"teacher and student disagree on the answer length ({len(t)} vs {logits.shape[0]} tokens)")
    temp = teacher.temperature
    kl = bucket_kl(logits, t, temp).sum() * (temp * temp)
    if loss == "kl":
        ce = logits.new_zeros((), dtype=torch.float32)
        total = kl
    else:
        ce = F.cross_entropy(logits.float(), targets, reduction="sum")
        total = (1.0 - kl_weight) * ce + kl_weight * kl
    count = num_items_in_batch if num_items_in_batch is not None else targets.numel()
    return total / count, LossParts(ce.detach(), kl.detach(), targets.numel())


__all__ = [
    "KL_LOSSES", "SELF_TEACHER", "CACHE_DIR", "LossParts", "Teacher", "TeacherCache", "TeacherTargets",
    "answer_logits", "answer_mask", "bucket_kl", "distill_loss", "load_frozen_teacher", "teacher_fingerprint",
    "teacher_kind", "topk_targets",
]
