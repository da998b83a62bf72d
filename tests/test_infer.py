"""Inference mechanics on a tiny random llama: batching, stopping, prefix cache, resumable files.

``tiny-random`` as built (init std 0.02, tied embeddings) greedily repeats the prompt's last
token ("\\n") forever, which would make every equality below vacuous. The tests therefore use
its weights redrawn at std 0.3 from a fixed seed ("lively"): a real model that emits varied
tokens, so a numeric difference between batched and unbatched runs would flip some of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from promptintern.errors import ConfigError, DataError, ModelError
from promptintern.inference import (
    InferArgs,
    _left_pad,
    cacheable_prefix_length,
    encode_prompts,
    generate,
    generate_with_prefix_cache,
    load_for_inference,
    partial_path,
    run_inference,
)
from promptintern.prompt import chat_prompt_text

SYSTEM = {"role": "system", "content": "You translate natural-language requests into one bash command."}
QUERIES = [
    "list all files",
    "find all python files modified in the last two days under the current directory",
    "count lines in foo.txt",
    "print the disk usage of every directory in /var sorted by size, largest first",
    "show the date",
    "kill process 42",
]
PROMPTS = [[SYSTEM, {"role": "user", "content": q}] for q in QUERIES]
IDS = [f"q{i}" for i in range(len(QUERIES))]
ITEMS = list(zip(IDS, PROMPTS, strict=True))
NEW = 8


@pytest.fixture(scope="module")
def lively_dir(tiny_model, tmp_path_factory) -> Path:
    """tiny-random with its matrices redrawn at std 0.3 (seeded), saved as an HF directory."""
    import copy

    model, tok = tiny_model
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    out = tmp_path_factory.mktemp("lively")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lively(lively_dir):
    from promptintern.models import load_model

    return load_model(str(lively_dir), device="cpu")


def _key(gens):
    return [(g.id, g.text, g.input_tokens, g.output_tokens) for g in gens]


def _first_tokens(model, tok, messages, n):
    ids = torch.tensor([encode_prompts(tok, [messages])[0]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, eos_token_id=[-1], pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


# ---------------------------------------------------------------- pure helpers


def test_cacheable_prefix_length():
    assert cacheable_prefix_length([]) == 0
    assert cacheable_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert cacheable_prefix_length([[1, 2], [1, 2, 3]]) == 1  # the shorter keeps one own token
    assert cacheable_prefix_length([[1, 2, 3]]) == 2
    assert cacheable_prefix_length([[5], [5]]) == 0
    assert cacheable_prefix_length([[1, 2], [3, 2]]) == 0


def test_left_pad():
    ids, mask = _left_pad([[7, 8, 9], [5]], pad_id=0, device="cpu")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_infer_args_validate():
    InferArgs().validate()
    for bad in ({"max_new_tokens": 0}, {"batch_size": 0}, {"num_threads": 0}):
        with pytest.raises(ConfigError):
            replace(InferArgs(), **bad).validate()


# ---------------------------------------------------------------- generation


def test_batched_equals_unbatched(lively):
    model, tok = lively
    one = generate(model, tok, PROMPTS, max_new_tokens=NEW, batch_size=1, ids=IDS, progress=False)
    assert [g.id for g in one] == IDS
    assert len({g.text for g in one}) > 1, "the test model should answer prompts differently"
    for bs in (2, 4, 8):
        assert _key(generate(model, tok, PROMPTS, max_new_tokens=NEW, batch_size=bs, ids=IDS, progress=False)) == _key(one)


def test_left_padding_and_unpadded_input_counts(lively, monkeypatch):
    model, tok = lively
    seen = []
    real = model.generate

    def spy(**kwargs):
        seen.append(kwargs["attention_mask"].clone())
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    side = tok.padding_side
    gens = generate(model, tok, PROMPTS, max_new_tokens=2, batch_size=len(PROMPTS), progress=False)
    assert tok.padding_side == side  # the caller's tokenizer is left alone
    (mask,) = seen
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # padding on the left
    expected = [len(tok(chat_prompt_text(tok, m), add_special_tokens=False)["input_ids"]) for m in PROMPTS]
    assert [g.input_tokens for g in gens] == expected
    assert sorted(mask.sum(1).tolist()) == sorted(expected)
    assert all(0 <= g.output_tokens <= 2 and g.latency_s > 0 for g in gens)


def test_stops_at_end_of_turn(lively, monkeypatch):
    model, tok = lively
    first, second = _first_tokens(model, tok, PROMPTS[0], 2)[:2]
    assert first != second
    monkeypatch.setattr(model.generation_config, "eos_token_id", [first])
    (g,) = generate(model, tok, PROMPTS[:1], max_new_tokens=NEW, batch_size=1, progress=False)
    assert (g.output_tokens, g.text) == (0, "")  # stopped at once; the stop token is not counted
    monkeypatch.setattr(model.generation_config, "eos_token_id", [second])
    (g,) = generate(model, tok, PROMPTS[:1], max_new_tokens=NEW, batch_size=1, progress=False)
    assert g.output_tokens == 1
    assert g.text == tok.decode([first], skip_special_tokens=True).strip()


def test_prefix_cache_equals_plain(lively):
    model, tok = lively
    plain = generate(model, tok, PROMPTS, max_new_tokens=NEW, batch_size=1, ids=IDS, progress=False)
    cached = generate_with_prefix_cache(model, tok, PROMPTS, max_new_tokens=NEW, ids=IDS, progress=False)
    assert _key(cached) == _key(plain)
    seqs = encode_prompts(tok, PROMPTS)
    system_only = len(tok(chat_prompt_text(tok, [SYSTEM])[: -len("<|im_start|>assistant\n")],
                          add_special_tokens=False)["input_ids"])
    assert cacheable_prefix_length(seqs) >= system_only > 0  # at least the system turn is cached


def test_batched_prefix_cache_equals_plain(lively):
    """Batches of queries of different lengths from one cached prefix: the padding between the prefix
    and each query's tokens changes no answer (the lively model flips tokens on a numeric slip)."""
    model, tok = lively
    plain = generate(model, tok, PROMPTS, max_new_tokens=NEW, batch_size=1, ids=IDS, progress=False)
    assert len({len(s) for s in encode_prompts(tok, PROMPTS)}) > 2  # padding is needed in a batch
    for batch_size in (2, 4):
        cached = generate_with_prefix_cache(model, tok, PROMPTS, max_new_tokens=NEW, ids=IDS, progress=False,
                                            batch_size=batch_size)
        assert _key(cached) == _key(plain)


# ---------------------------------------------------------------- prediction files


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_latency(rows):
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]


@pytest.fixture(scope="module")
def reference(lively, tmp_path_factory) -> list[dict]:
    """Rows of an uninterrupted run (batch size 2)."""
    model, tok = lively
    out = tmp_path_factory.mktemp("ref") / "preds.jsonl"
    stats = run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, batch_size=2, progress=False))
    assert stats["n"] == stats["generated"] == len(ITEMS) and stats["resumed"] == 0
    assert stats["batch_size"] == 2 and stats["throughput_qps"] > 0 and not stats["prefix_cache"]
    assert not partial_path(out).exists()
    return _rows(out)


def test_run_inference_writes_input_order(reference):
    assert [r["id"] for r in reference] == IDS
    assert all(set(r) == {"id", "prediction", "input_tokens", "output_tokens", "latency_s"} for r in reference)


def test_run_inference_prefix_cache_matches(lively, reference, tmp_path):
    model, tok = lively
    out = tmp_path / "preds.jsonl"
    for batch_size in (1, 4):
        stats = run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, prefix_cache=True,
                                                                batch_size=batch_size, progress=False))
        assert stats["prefix_cache"] and stats["batch_size"] == batch_size and stats["prefix_tokens"] > 0
        assert _without_latency(_rows(out)) == _without_latency(reference)
        out.unlink()


def test_resume_after_torn_partial(lively, reference, tmp_path):
    model, tok = lively
    out = tmp_path / "preds.jsonl"
    kept = [dict(reference[1], prediction="FROM-PARTIAL"), dict(reference[4], prediction="FROM-PARTIAL")]
    torn = json.dumps(reference[0])[:25]
    partial_path(out).write_text("".join(json.dumps(r) + "\n" for r in kept) + torn)
    stats = run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, batch_size=2, progress=False))
    assert (stats["generated"], stats["resumed"]) == (len(ITEMS) - 2, 2)
    rows = _rows(out)
    assert [r["id"] for r in rows] == IDS  # no duplicates, input order
    assert [r["prediction"] for r in rows if r["prediction"] == "FROM-PARTIAL"] == ["FROM-PARTIAL"] * 2
    expect = [dict(r, prediction="FROM-PARTIAL") if r["id"] in ("q1", "q4") else r for r in reference]
    assert _without_latency(rows) == _without_latency(expect)
    assert not partial_path(out).exists()

    # A finished file counts as done on resume; without resume everything is regenerated.
    before = out.read_bytes()
    assert run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, progress=False))["generated"] == 0
    assert out.read_bytes() == before
    stats = run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, progress=False), resume=False)
    assert stats["generated"] == len(ITEMS)
    assert _without_latency(_rows(out)) == _without_latency(reference)


def test_resume_rejects_foreign_rows(lively, reference, tmp_path):
    model, tok = lively
    out = tmp_path / "preds.jsonl"
    partial_path(out).write_text(json.dumps(dict(reference[0], id="elsewhere")) + "\n")
    with pytest.raises(DataError, match="elsewhere"):
        run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, progress=False))
    with pytest.raises(DataError, match="duplicate"):
        run_inference(model, tok, [*ITEMS, ITEMS[0]], out, InferArgs(max_new_tokens=NEW, progress=False))


DYING_RUN = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from promptintern import inference as infer
    from promptintern.models import load_model

    model_dir, out, items = sys.argv[1], Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
    model, tok = load_model(model_dir, device="cpu")
    real_append, calls = infer._append_rows, []

    def dying_append(path, rows):  # the third batch is killed half-way through its write
        calls.append(1)
        if len(calls) == 3:
            payload = (json.dumps(rows[0]) + "\\n").encode()
            with open(path, "ab") as fh:
                fh.write(payload[: len(payload) // 2])
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real_append(path, rows)

    infer._append_rows = dying_append
    infer.run_inference(model, tok, [tuple(i) for i in items], out,
                        infer.InferArgs(max_new_tokens=int(sys.argv[4]), batch_size=2, progress=False))
""")


def test_sigkill_then_resume_matches_uninterrupted(lively, lively_dir, reference, tmp_path):
    model, tok = lively
    out, items, script = tmp_path / "preds.jsonl", tmp_path / "items.json", tmp_path / "run.py"
    items.write_text(json.dumps(ITEMS))
    script.write_text(DYING_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(lively_dir), str(out), str(items), str(NEW)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()  # never a partial file under the final name
    raw = partial_path(out).read_bytes()
    assert raw.count(b"\n") == 4 and not raw.endswith(b"\n")  # two whole batches + a torn row

    stats = run_inference(model, tok, ITEMS, out, InferArgs(max_new_tokens=NEW, batch_size=2, progress=False))
    assert (stats["resumed"], stats["generated"]) == (4, 2)
    assert _without_latency(_rows(out)) == _without_latency(reference)
    assert not partial_path(out).exists()


# ---------------------------------------------------------------- adapters


def test_load_for_inference(lively, lively_dir, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    base, tok = lively
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([encode_prompts(tok, PROMPTS[:1])[0]])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        merged, _ = load_for_inference(str(lively_dir), tmp_path / "adapter", merge=True, device="cpu")
        unmerged, _ = load_for_inference(str(lively_dir), tmp_path / "adapter", merge=False, device="cpu")
        assert not merged.training and not unmerged.training
        assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4)
        assert torch.allclose(unmerged(input_ids=ids).logits, want, atol=1e-5)
        assert not torch.allclose(base(input_ids=ids).logits, want, atol=1e-3)  # the adapter matters
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_for_inference(str(lively_dir), tmp_path / "missing")


@pytest.mark.slow
def test_real_model_batch_and_prefix_invariant():
    """SmolLM2-135M on CPU fp32: batched, unbatched and prefix-cached greedy answers agree."""
    from promptintern.models import load_model

    model, tok = load_model("smollm2-135m", device="cpu")
    prompts = [PROMPTS[i] for i in (0, 2, 4, 5)]
    one = generate(model, tok, prompts, max_new_tokens=24, batch_size=1, progress=False)
    assert any(g.output_tokens < 24 for g in one)  # it ends its turn by itself
    assert _key(generate(model, tok, prompts, max_new_tokens=24, batch_size=4, progress=False)) == _key(one)
    assert _key(generate_with_prefix_cache(model, tok, prompts, max_new_tokens=24, progress=False)) == _key(one)
    assert _key(generate_with_prefix_cache(model, tok, prompts, max_new_tokens=24, progress=False,
                                           batch_size=4)) == _key(one)
