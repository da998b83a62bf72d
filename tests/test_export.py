"""Exported adapters and merged models reload unchanged and give the trained model's logits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from promptintern.args import LoraArgs
from promptintern.errors import RunDirError
from promptintern.exporter import export
from promptintern.io import write_json
from promptintern.models import load_model, resolve_model_path
from promptintern.training import train_stages

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_fixtures import tiny_run_config, write_config  # noqa: E402
from train_fixtures import toy_args, toy_stages  # noqa: E402


class KeepModel(TrainerCallback):
    model = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-stage run and its model as it is in memory at the end of training."""
    run_dir = tmp_path_factory.mktemp("run")
    keep = KeepModel()
    train_stages(toy_stages(2), model_name="tiny-random", lora=LoraArgs(), args=toy_args(max_steps_per_stage=3, use_cpu=True),
                 run_dir=run_dir, callbacks=[keep])  # fp32 on the CPU: the reloads are compared to 1e-5
    model = keep.model.eval()
    _, tok = load_model("tiny-random")
    text = tok.apply_chat_template(toy_stages(2)[1].records[0].messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text + "7", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return run_dir, ids, logits


def test_adapter_export_reloads_with_peft(trained, tmp_path):
    from peft import PeftModel

    run_dir, ids, expected = trained
    out = export(run_dir, tmp_path / "adapter", model_card={"task": "toy"})
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(resolve_model_path("tiny-random"))
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    card = (out / "README.md").read_text()
    assert "tiny-random" in card and "| stage |" in card and "task: toy" in card
    assert AutoTokenizer.from_pretrained(str(out)).chat_template


def test_merged_export_reloads_with_transformers(trained, tmp_path):
    run_dir, ids, expected = trained
    import os

    write_json(run_dir / "metrics.json", {"task": "toy", "metric": "exact_match", "n_test": 2, "systems": {
        "promptintern": {"tau": 0.0, "k": 0, "metrics": {"exact_match": 0.5}, "ci95": {"exact_match": [0, 1]}}}})
    before = os.umask(0o022)  # as a service's files are: readable by the user a server runs as
    try:
        out = export(run_dir, tmp_path / "merged", merge=True)
    finally:
        os.umask(before)
        (run_dir / "metrics.json").unlink()
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
    assert modes and set(modes.values()) <= {0o644, 0o755} and modes["merged"] == 0o755, modes
    assert modes["model.safetensors"] == modes["README.md"] == 0o644
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
    assert not any(n.endswith(("lora_A.weight", "lora_B.weight")) for n, _ in model.named_parameters())
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template and (out / "generation_config.json").is_file()
    assert model.generation_config.eos_token_id is not None
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card, card
    assert "| system | exact_match | k | tau |" in card and "| promptintern | 0.5 | 0 | 0 |" in card


def test_export_refuses_to_overwrite_or_to_export_nothing(trained, tmp_path):
    run_dir, _, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--force"):
        export(run_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "file.txt").read_text() == "mine"
    export(run_dir, tmp_path / "busy", force=True)
    assert not (tmp_path / "busy" / "file.txt").exists()
    with pytest.raises(RunDirError, match="no trained adapter"):
        export(tmp_path / "empty-run", tmp_path / "out")
    with pytest.raises(RunDirError, match="other than the run directory"):
        export(run_dir, run_dir / "adapter", force=True)


def test_export_cli_refuses_then_replaces_with_force(trained, tmp_path, capsys):
    """The refusal's advice (--force) is an option the export command has."""
    from promptintern.cli import main

    run_dir, _, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    argv = ["export", "--run", str(run_dir), "--out", str(tmp_path / "busy")]
    assert main(argv) != 0
    assert "use --force" in capsys.readouterr().err and (tmp_path / "busy" / "file.txt").is_file()
    assert main([*argv, "--force"]) == 0
    assert not (tmp_path / "busy" / "file.txt").exists() and (tmp_path / "busy" / "adapter_config.json").is_file()


# ---------------------------------------------------------------- the served prompt travels with the model

RAW_QUERIES = ["How many employees are there?", 'names with "quotes", {{ braces }} and ünïcode\nover two lines']


@pytest.fixture(scope="module")
def sql_run(tmp_path_factory):
    """A tiny promptintern run of the SQL example task (served with the query alone)."""
    from promptintern.config import load_config
    from promptintern.pipeline import train

    tmp = tmp_path_factory.mktemp("sql")
    cfg = tiny_run_config(tmp / "run", train={"max_steps_per_stage": 1, "per_device_batch_size": 2, "use_cpu": True})
    train(load_config(str(write_config(tmp / "c.yaml", cfg))))
    return tmp / "run"


def _infer_ids(run_dir, queries):
    """The token ids ``promptintern infer`` feeds the model for ``queries`` (its own code path)."""
    from promptintern.config import load_config
    from promptintern.inference import encode_prompts
    from promptintern.models import load_tokenizer
    from promptintern.pipeline import prepare, serving_messages
    from promptintern.tasks.base import Instance

    cfg = load_config(str(run_dir / "config.yaml"))
    prep = prepare(cfg, run_dir)
    insts = [Instance(id=str(i), query=q, answer="") for i, q in enumerate(queries)]
    items = serving_messages(prep, insts, prep.plan.serve_tau, prep.plan.serve_k)
    return encode_prompts(load_tokenizer(cfg.model), [m for _, m in items])


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_export_chat_template_renders_the_served_prompt(sql_run, tmp_path, merge):
    out = export(sql_run, tmp_path / "out", merge=merge)
    tok = AutoTokenizer.from_pretrained(str(out))
    served = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"] for q in RAW_QUERIES]
    assert served == _infer_ids(sql_run, RAW_QUERIES)
    text = tok.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True, tokenize=False)
    assert "You are a helpful assistant who writes SQL." in text and "Question: Q?" in text
    card = (out / "README.md").read_text()
    assert "## Prompt format" in card and "Question: {query}" in card and "send the raw query" in card


def test_wrapping_keeps_a_client_system_message_and_other_turns(sql_run):
    from promptintern.exporter import served_prompt, wrapping_chat_template
    from promptintern.models import load_tokenizer

    served = served_prompt(sql_run)
    base = load_tokenizer("tiny-random")
    expected = base.apply_chat_template(
        [{"role": "system", "content": "mine"}, {"role": "user", "content": "Question: a"},
         {"role": "assistant", "content": "SELECT 1"}, {"role": "user", "content": "Question: b"}],
        add_generation_prompt=True, tokenize=False)
    base.chat_template = wrapping_chat_template(base.chat_template, served)
    got = base.apply_chat_template(
        [{"role": "system", "content": "mine"}, {"role": "user", "content": "a"},
         {"role": "assistant", "content": "SELECT 1"}, {"role": "user", "content": "b"}],
        add_generation_prompt=True, tokenize=False)
    assert got == expected


def test_methods_served_with_examples_keep_the_base_template(tmp_path):
    from promptintern.exporter import apply_served_prompt, served_prompt
    from promptintern.models import load_tokenizer

    write_config(tmp_path / "config.yaml", tiny_run_config(tmp_path, method="full-prompt"))
    served = served_prompt(tmp_path)
    assert (served.method, served.k, served.wrappable) == ("full-prompt", 1, False)
    tok = load_tokenizer("tiny-random")
    before = tok.chat_template
    apply_served_prompt(tok, served)
    assert tok.chat_template == before
