"""One run identity and one model identity, shared by every guard and cache."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline_fixtures import tiny_run_config, write_config
from promptintern.args import LoraArgs, TrainArgs, volatile_fields
from promptintern.cli import main
from promptintern.config import RunConfig, load_config
from promptintern.errors import RunDirError
from promptintern.identity import describe_differences, differences, file_digest, model_identity
from promptintern.pipeline import open_run_dir
from promptintern.training import train_record
from train_fixtures import toy_stages

# A value different from the default, for every field marked volatile.
CHANGED = {"save_steps": 50, "save_total_limit": 5, "keep_checkpoints": True, "logging_steps": 3,
           "report_to": "tensorboard", "dataloader_num_workers": 2, "num_threads": 2, "shared_prefix": "off"}


def test_both_guards_share_the_volatile_rule():
    """Every volatile TrainArgs field leaves the run's and the trainer's identities unchanged; a
    result-changing field changes both."""
    assert set(CHANGED) == volatile_fields(TrainArgs)
    stages = toy_stages(1, 2)
    base_record = train_record(stages, "tiny-random", LoraArgs(), TrainArgs())
    base_fp = RunConfig().fingerprint()
    for name, value in CHANGED.items():
        cfg = RunConfig(train=TrainArgs(**{name: value}))
        assert cfg.fingerprint() == base_fp, name
        assert train_record(stages, "tiny-random", LoraArgs(), cfg.train) == base_record, name
    lr = RunConfig(train=TrainArgs(learning_rate=1e-3))
    assert lr.fingerprint() != base_fp
    assert differences(train_record(stages, "tiny-random", LoraArgs(), lr.train), base_record) == ["train.learning_rate"]
    assert RunConfig(output_dir="elsewhere").fingerprint() == base_fp


def test_refusals_name_every_differing_field(tmp_path):
    cfg = RunConfig(output_dir=str(tmp_path / "run"))
    open_run_dir(cfg, resume=False, force=False)
    open_run_dir(dataclasses.replace(cfg, train=TrainArgs(save_steps=50)), resume=True, force=False)
    changed = dataclasses.replace(cfg, train=TrainArgs(learning_rate=1e-3), method="full-prompt")
    with pytest.raises(RunDirError) as info:
        open_run_dir(changed, resume=True, force=False)
    text = str(info.value)
    assert "method ('promptintern' → 'full-prompt')" in text and "train.learning_rate (0.0002 → 0.001)" in text
    assert "--force" not in text and "\n" not in text


def test_old_run_json_without_identity_compares_its_config_yaml(tmp_path):
    cfg = RunConfig(output_dir=str(tmp_path / "run"))
    run_dir = open_run_dir(cfg, resume=False, force=False)
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": "from-an-older-rule"}))
    open_run_dir(cfg, resume=True, force=False)  # same fields: accepted although the hash rule changed
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": "from-an-older-rule"}))
    with pytest.raises(RunDirError, match=r"train\.seed \(0 → 1\)"):
        open_run_dir(dataclasses.replace(cfg, train=TrainArgs(seed=1)), resume=True, force=False)


def test_a_field_marked_volatile_later_is_no_difference(tmp_path):
    """The saved config is read under today's rules: a run whose retrieve.batch_size differs (a
    field that changes no result, marked volatile) still resumes, whatever run.json's hash says."""
    cfg = RunConfig(output_dir=str(tmp_path / "run"))
    run_dir = open_run_dir(cfg, resume=False, force=False)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["retrieve"]["batch_size"] = 7
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": "made-under-older-rules"}))
    open_run_dir(cfg, resume=True, force=False)


def test_describe_differences_limits_its_length():
    saved = {"a": {str(i): i for i in range(6)}}
    now = {"a": {str(i): i + 1 for i in range(6)}}
    assert describe_differences(saved, now).endswith("and 3 more")


def test_model_identity_hashes_whole_files_and_caches_the_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(300_000))
    first = model_identity(model)
    assert model_identity(model) == first
    # a byte changed deep inside the file (beyond any leading block) changes the identity
    data = bytearray(weights.read_bytes())
    data[250_000] = 1
    weights.write_bytes(bytes(data))
    assert model_identity(model) != first
    # the digest is cached by (size, mtime): content changed behind an unchanged size and mtime
    # still returns the cached digest, proving the file was not read again
    cached, stat = file_digest(weights), weights.stat()
    weights.write_bytes(bytes(300_000))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(weights) == cached
    assert len(list((tmp_path / "cache" / "digests").iterdir())) == 2  # one entry per file, replaced in place


def test_adapter_identity_includes_its_base(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/a"}))
    a = model_identity(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/b"}))
    assert model_identity(adapter) != a


def test_run_resume_with_a_volatile_change_continues_and_lr_change_is_refused(tmp_path, capsys):
    """The CLI end to end: `run --resume --set train.save_steps=50` continues; a new learning rate
    is refused with one line naming train.learning_rate."""
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", baselines=[],
                                                            schedule={"stages": 2, "k": 0},
                                                            train={"max_steps_per_stage": 1, "per_device_batch_size": 2},
                                                            infer={"max_new_tokens": 4, "progress": False,
                                                                   "prefix_cache": True}))
    assert main(["train", str(cfg)]) == 0
    shutil.rmtree(tmp_path / "run" / "adapter")  # as if interrupted before the end
    capsys.readouterr()
    assert main(["run", str(cfg), "--resume", "--set", "train.save_steps=50"]) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["systems"]["promptintern"]["prefix_cache"] is True  # the config's infer.prefix_cache is served
    assert load_config(str(tmp_path / "run" / "config.yaml")).train.save_steps == 50
    capsys.readouterr()
    assert main(["run", str(cfg), "--resume", "--set", "train.learning_rate=1e-3"]) == 5
    err = capsys.readouterr().err.strip()
    assert "train.learning_rate" in err and "\n" not in err


def test_directory_identity_is_content_not_location_or_mtime(tmp_path, monkeypatch):
    """Content, not location or mtime, names a model directory."""
    monkeypatch.setenv("PROMPTINTERN_CACHE", str(tmp_path / "cache"))
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text('{"x": 1}')
    (a / "model.safetensors").write_bytes(b"\x00" * 1000)
    b = Path(shutil.copytree(a, tmp_path / "b"))
    os.utime(b / "model.safetensors", (0, 0))
    assert model_identity(a) == model_identity(b)
