"""Why this module stays whole at over 450 lines: batching, prefix caching and the resumable output
share one decoder and one bookkeeping of tokens and latency, which a split would duplicate.

Generation for evaluation (greedy) and for a teacher's sampled answers: batched, prefix-cached,
metered and resumable.

Prompts are chat messages without the assistant turn; they are rendered with the tokenizer's
chat template (:func:`promptintern.prompt.chat_prompt_text`) and tokenized without extra
special tokens, exactly as in training, so the served prompt is the trained prompt.

Choices:

- Batches are left-padded by hand (pad id, attention mask 0) instead of through the
  tokenizer, so the caller's tokenizer is never mutated. ``generate`` derives the position ids
  from the attention mask, so a padded prompt sees the same positions as an unpadded one.
- Queries are sorted by prompt length (longest first) before batching to reduce padding;
  results come back in input order. On CPU in fp32 batched and unbatched greedy outputs agree
  (tested); on GPUs and in bf16 the batch shape can change rounding and, rarely, a token.
- Decoding stops at end of turn: the union of the generation config's ``eos_token_id``, the
  tokenizer's eos and ``<|im_end|>`` when the vocabulary has it. ``output_tokens`` counts the
  generated tokens before the first stop token (the stop token itself is not counted).
- ``latency_s`` of a query is the wall time of the batch it ran in: the true latency at batch
  size 1, the time a caller waits for its answer at batch size ``b``. Throughput
  (queries/s) is what batching buys.
- Prefix caching (:func:`generate_with_prefix_cache`) runs the prompts' longest common token
  prefix (system turn + template) once and serves each batch from a copy of that KV cache,
  one per row; at batch size 1, the fair latency baseline for a full prompt. In a batch the
  padding sits between the prefix and each query's own tokens (see ``_prefix_and_left_pad``).
- :func:`run_inference` appends each finished batch to ``<out>.partial`` (flushed and
  fsynced) and, when every query is done, writes ``<out>`` atomically in input order and
  removes the partial file. Resume keeps the rows already there; given the call's
  ``settings`` (run, arguments, input), only when the partial file was made with the same.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .args import InferArgs  # noqa: F401  (re-exported: it lived here before args.py)
from .errors import ConfigError, DataError, ModelError
from .io import iter_jsonl, write_json, write_jsonl
from .models import cache_keyword
from .progress import progress_bar
from .prompt import chat_prompt_text
from .serving_checks import RESTART_HINT, check_adapter, check_prompt_lengths, check_settings, settings_path

END_OF_TURN = "<|im_end|>"
ROW_FIELDS = ("id", "prediction", "input_tokens", "output_tokens", "latency_s")

Messages = list[dict[str, str]]


@dataclass
class Generation:
    """One answered query, metered."""

    id: str
    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "prediction": self.text, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "latency_s": self.latency_s}


# ---------------------------------------------------------------- tokens


def encode_prompts(tokenizer: Any, prompts: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each chat prompt (template applied, ending with the assistant header)."""
    return [tokenizer(chat_prompt_text(tokenizer, m), add_special_tokens=False)["input_ids"] for m in prompts]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: generation config eos, tokenizer eos and ``<|im_end|>`` if known."""
    ids: set[int] = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.add(eot)
    if not ids:
        raise ModelError("the tokenizer defines no end-of-sequence token; cannot stop generation")
    return sorted(ids)


def cacheable_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs``, leaving every sequence >= 1 own token.

    Generation needs at least one uncached token per query to produce its first logits.
    """
    if not seqs:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(n, 0)


def _count_until_stop(tokens: Sequence[int], stops: set[int]) -> int:
    return next((i for i, t in enumerate(tokens) if t in stops), len(tokens))


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _prefix_and_left_pad(seqs: Sequence[Sequence[int]], prefix_len: int, pad_id: int, device: Any
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared first ``prefix_len`` tokens, then each sequence's rest left-padded.

    With a cache of the prefix, a batch must keep the prefix at the same positions in every row, so
    the padding goes between prefix and rest: the mask hides it, and the positions, which generation
    counts from the mask, run on from the prefix as they would in the row alone.
    """
    if not prefix_len:
        return _left_pad(seqs, pad_id, device)
    ids, mask = _left_pad([s[prefix_len:] for s in seqs], pad_id, device)
    prefix = torch.tensor([list(seqs[0][:prefix_len])] * len(seqs), dtype=torch.long, device=device)
    return torch.cat([prefix, ids], dim=1), torch.cat([torch.ones_like(prefix), mask], dim=1)


# ---------------------------------------------------------------- generation


@dataclass
class _Decoder:
    """``model.generate`` with fixed stopping and padding, decoding new tokens only: greedy, or
    sampled at ``temperature`` (> 0; no top-k / top-p), the RNG seeded from the batch's query ids so
    the same batch gives the same answers (the global RNG is left as it was)."""

    model: Any
    tokenizer: Any
    max_new_tokens: int
    temperature: float = 0.0
    stops: list[int] = field(init=False)
    pad_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.stops = stop_token_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stops[0]

    def __call__(self, seqs: Sequence[Sequence[int]], cache: Any = None, ids: Sequence[str] = (),
                 prefix_len: int = 0) -> list[tuple[str, int]]:
        """(text, output tokens) per sequence; ``cache`` holds the first ``prefix_len`` tokens of every
        sequence, once per row."""
        input_ids, mask = _prefix_and_left_pad(seqs, prefix_len, self.pad_id, self.model.device)
        sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0} \
            if self.temperature > 0 else {"do_sample": False}
        with _seeded(ids) if self.temperature > 0 else contextlib.nullcontext():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=mask, **{cache_keyword(self.model): cache},
                max_new_tokens=self.max_new_tokens, min_new_tokens=0, num_beams=1, **sampling,
                repetition_penalty=1.0, eos_token_id=self.stops, pad_token_id=self.pad_id, use_cache=True,
            )
        stops = set(self.stops)
        results = []
        for new in out[:, input_ids.shape[1]:].tolist():
            n = _count_until_stop(new, stops)
            results.append((self.tokenizer.decode(new[:n], skip_special_tokens=True).strip(), n))
        return results


@contextlib.contextmanager
def _seeded(ids: Sequence[str]) -> Iterator[None]:
    """Every device's RNG seeded from ``ids`` for the block, and restored after it."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(hashlib.sha256("\n".join(ids).encode()).hexdigest()[:15], 16))
        yield


def build_prefix_cache(model: Any, prefix: Sequence[int]) -> Any:
    """The KV cache of ``prefix`` (a ``DynamicCache`` holding ``len(prefix)`` positions)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([list(prefix)], device=model.device), **{cache_keyword(model): cache}, use_cache=True)
    return cache


def _iter_batched(decode: _Decoder, seqs: list[list[int]], ids: list[str], batch_size: int, cache: Any = None,
                  prefix_len: int = 0) -> Iterator[list[tuple[int, Generation]]]:
    """Yield (input index, generation) per batch, longest prompts first; with ``cache`` (the first
    ``prefix_len`` tokens of every sequence) each batch is served from a copy of it repeated once per row.

    A batch's latency includes copying the cache but not building it (a one-time cost).
    """
    order = sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        t0 = time.perf_counter()
        rows = copy.deepcopy(cache)
        if rows is not None and len(chunk) > 1:
            rows.batch_repeat_interleave(len(chunk))
        with torch.inference_mode():
            outs = decode([seqs[i] for i in chunk], rows, ids=[ids[i] for i in chunk], prefix_len=prefix_len)
        wall = time.perf_counter() - t0
        yield [(i, Generation(ids[i], text, len(seqs[i]), n, wall)) for i, (text, n) in zip(chunk, outs, strict=True)]


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int = 0) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n_queries)``."""
    bar = progress_bar("generating", "{task.fields[qps]:.2f} queries/s", enabled)
    task = bar.add_task("generate", total=total, completed=completed, qps=0.0)
    t0, done = time.perf_counter(), 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(task, advance=n, qps=done / max(time.perf_counter() - t0, 1e-9))

    with bar:
        yield advance


def _check_ids(prompts: Sequence[Messages], ids: Sequence[str] | None) -> list[str]:
    ids = [str(i) for i in range(len(prompts))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(prompts):
        raise ValueError(f"{len(ids)} ids for {len(prompts)} prompts")
    return ids


def _collect(batches: Iterator[list[tuple[int, Generation]]], n: int, progress: bool) -> list[Generation]:
    out: list[Generation | None] = [None] * n
    with _progress(progress, n) as advance:
        for batch in batches:
            for i, g in batch:
                out[i] = g
            advance(len(batch))
    return [g for g in out if g is not None]


def generate(model: Any, tokenizer: Any, prompts: Sequence[Messages], *, max_new_tokens: int, batch_size: int,
             ids: Sequence[str] | None = None, progress: bool = True) -> list[Generation]:
    """Greedy answers to chat ``prompts`` (no assistant turn), in input order, left-padded batches."""
    ids = _check_ids(prompts, ids)
    seqs = encode_prompts(tokenizer, prompts)
    decode = _Decoder(model, tokenizer, max_new_tokens)
    return _collect(_iter_batched(decode, seqs, ids, batch_size), len(seqs), progress)


def generate_with_prefix_cache(model: Any, tokenizer: Any, prompts: Sequence[Messages], *, max_new_tokens: int,
                               ids: Sequence[str] | None = None, progress: bool = True, batch_size: int = 1
                               ) -> list[Generation]:
    """Like :func:`generate`, with the prompts' common prefix computed once (batch size 1 by default:
    a served query's latency).

    The cached prefix has ``cacheable_prefix_length(encode_prompts(tokenizer, prompts))`` tokens.
    """
    ids = _check_ids(prompts, ids)
    seqs = encode_prompts(tokenizer, prompts)
    decode = _Decoder(model, tokenizer, max_new_tokens)
    prefix_len = cacheable_prefix_length(seqs)
    cache = build_prefix_cache(model, seqs[0][:prefix_len]) if prefix_len else None
    return _collect(_iter_batched(decode, seqs, ids, batch_size, cache, prefix_len), len(seqs), progress)


# ---------------------------------------------------------------- prediction files


def partial_path(out_path: Path) -> Path:
    """Where :func:`run_inference` accumulates rows before ``out_path`` is complete."""
    return out_path.with_suffix(out_path.suffix + ".partial")


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict) or any(k not in row for k in ROW_FIELDS):
        raise DataError(f"{where}: not a prediction row (needs {', '.join(ROW_FIELDS)})")
    return row


def load_partial(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a partial prediction file by id; a torn last line is cut off the file.

    Rows are appended one batch per write and fsynced, so a kill (or power loss) can only
    leave an incomplete tail: the bytes after the last newline, or a last line that does not
    parse. Anything unparsable before the last line is corruption and raises :class:`DataError`.
    """
    if not path.is_file():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict[str, Any]] = {}
    good_end = pos = 0
    lines = data.splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        pos += len(line)
        if not line.endswith(b"\n"):
            break
        if line.strip():
            try:
                row = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if lineno == len(lines):
                    break
                raise DataError(f"{path}:{lineno}: corrupt row; {RESTART_HINT}") from exc
            row = _check_row(row, f"{path}:{lineno}")
            rows[str(row["id"])] = row
        good_end = pos
    if good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            os.fsync(fh.fileno())
    return rows


def _append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _done_rows(out_path: Path | None, partial: Path, wanted: set[str], resume: bool) -> dict[str, dict[str, Any]]:
    """Rows to keep: on resume, those of a finished ``out_path`` and of the partial file."""
    if not resume:
        partial.unlink(missing_ok=True)
        settings_path(partial).unlink(missing_ok=True)
        return {}
    done: dict[str, dict[str, Any]] = {}
    if out_path is not None and out_path.is_file():
        for row in iter_jsonl(out_path, required=ROW_FIELDS):
            done[str(row["id"])] = row
    done.update(load_partial(partial))
    stray = next((i for i in done if i not in wanted), None)
    if stray is not None:
        where = partial if partial.is_file() else out_path
        raise DataError(f"{where}: has predictions for id {stray!r}, which is not among the queries; {RESTART_HINT}")
    return done


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def run_inference(model: Any, tokenizer: Any, items: Sequence[tuple[str, Messages]], out_path: Path,
                  args: InferArgs, resume: bool = True, settings: dict[str, Any] | None = None,
                  reuse_output: bool = True) -> dict[str, Any]:
    """Answer ``items`` (id, messages) into the JSONL file ``out_path``; returns serving stats.

    Rows: ``{"id", "prediction", "input_tokens", "output_tokens", "latency_s"}`` in input order.
    ``throughput_qps`` is the queries generated in this call over their generation time (at
    ``batch_size``; with the prefix cache, plus the prefix's one-time build); when
    everything was resumed it is estimated from the stored latencies.

    ``settings`` are recorded beside the partial file (see :mod:`.serving_checks`); ``reuse_output``:
    a finished ``out_path`` counts as done rows on resume (the run directory's own predictions).
    """
    args.validate()
    if not isinstance(args.max_new_tokens, int):  # 'auto' is resolved by the pipeline, which knows the data
        raise ConfigError("run_inference needs a number for max_new_tokens; resolve 'auto' with "
                          "promptintern.answer_length.resolve_infer_args")
    out_path = Path(out_path)
    ids = [str(i) for i, _ in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"duplicate query id {dup!r}; ids must be unique")
    if args.num_threads:
        from .models import set_cpu_threads

        set_cpu_threads(args.num_threads)

    t_start = time.perf_counter()
    partial = partial_path(out_path)
    all_seqs = encode_prompts(tokenizer, [m for _, m in items])
    check_prompt_lengths(all_seqs, ids, model, args.max_new_tokens)
    if resume:
        check_settings(partial, settings)
    done = _done_rows(out_path if reuse_output else None, partial, set(ids), resume)
    todo = [k for k, i in enumerate(ids) if i not in done]
    # The prefix comes from all queries, not only the pending ones, so a resumed run caches the
    # same prefix as an uninterrupted one.
    prefix_len = cacheable_prefix_length(all_seqs) if args.prefix_cache else 0
    seqs, todo_ids = [all_seqs[k] for k in todo], [ids[k] for k in todo]

    gen_wall = 0.0
    if todo:
        decode = _Decoder(model, tokenizer, args.max_new_tokens, args.temperature)
        t0 = time.perf_counter()  # the prefix's one-time build counts towards throughput
        cache = build_prefix_cache(model, all_seqs[0][:prefix_len]) if prefix_len else None
        gen_wall = time.perf_counter() - t0
        batches = _iter_batched(decode, seqs, todo_ids, args.batch_size, cache, prefix_len)
        partial.parent.mkdir(parents=True, exist_ok=True)
        if settings is not None and not partial.is_file():
            write_json(settings_path(partial), settings)  # before the first row: the rows' provenance
        with _progress(args.progress, len(ids), completed=len(done)) as advance:
            for batch in batches:
                rows = [g.to_row() for _, g in batch]
                _append_rows(partial, rows)
                done.update((r["id"], r) for r in rows)
                gen_wall += batch[0][1].latency_s
                advance(len(batch))

    rows = [done[i] for i in ids]
    write_jsonl(out_path, rows)
    partial.unlink(missing_ok=True)
    settings_path(partial).unlink(missing_ok=True)

    batch_size = args.batch_size
    latencies = [float(r["latency_s"]) for r in rows]
    if todo:
        qps = len(todo) / max(gen_wall, 1e-9)
    else:
        qps = len(rows) * batch_size / max(sum(latencies), 1e-9) if rows else 0.0
    return {
        "n": len(rows),
        "generated": len(todo),
        "resumed": len(rows) - len(todo),
        "input_tokens_mean": _mean([r["input_tokens"] for r in rows]),
        "output_tokens_mean": _mean([r["output_tokens"] for r in rows]),
        "latency_s_mean": _mean(latencies),
        "throughput_qps": qps,
        "wall_s": time.perf_counter() - t_start,
        "batch_size": batch_size,
        "max_new_tokens": args.max_new_tokens,
        "prefix_cache": args.prefix_cache,
        "prefix_tokens": prefix_len,
    }


def read_predictions(path: Path) -> dict[str, str]:
    """``{id: prediction}`` of a predictions file (the one reader of what :func:`run_inference` writes)."""
    from .io import read_jsonl

    return {str(r["id"]): r["prediction"] for r in read_jsonl(path, required=("id", "prediction"))}


# ---------------------------------------------------------------- models


def load_for_serving(base_model: str, adapter_dir: Path | None, merge: bool | None = None,
                     device: str | None = None, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """The base model with a trained PEFT adapter applied, in eval mode: the one way to serve it.

    ``device`` defaults to a GPU when one is visible, ``dtype`` to the device's serving dtype
    (see :mod:`promptintern.models`). ``merge`` (default: only in float32) folds the LoRA update
    into the base weights. In bf16 it is not folded: most of a LoRA update is smaller than half
    a bf16 step of the weight it is added to, so a merged bf16 model — merged in bf16, or merged
    in fp32 and then cast — rounds it away and is not the model that was trained. Unmerged, peft
    keeps the adapter in fp32 beside the bf16 base, exactly as it was trained.
    """
    from .models import default_device, load_model, pick_dtype

    device = device or default_device()
    dtype = dtype or pick_dtype(device)
    model, tokenizer = load_model(base_model, device=device, dtype=dtype)
    if adapter_dir is None:
        return model, tokenizer
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no PEFT adapter here (adapter_config.json missing)")
    check_adapter(adapter_dir)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, str(adapter_dir))
    if merge if merge is not None else dtype == torch.float32:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


load_for_inference = load_for_serving  # the name it had before it became the one serving path
