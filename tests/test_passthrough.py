"""train.extra / lora.extra reach transformers and peft as they are; train.dtype is explicit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from pipeline_fixtures import tiny_run_config, write_config
from promptintern.args import LoraArgs, TrainArgs
from promptintern.cli import main
from promptintern.configtools import from_dict
from promptintern.errors import ConfigError
from promptintern.training import train_stages
from train_fixtures import toy_args, toy_stages


class Seen(TrainerCallback):
    """Records what the Trainer really ran with."""

    def __init__(self) -> None:
        self.checkpointing: list[bool] = []
        self.bf16: list[bool] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.checkpointing.append(bool(model.is_gradient_checkpointing))
        self.bf16.append(bool(args.bf16))


def _train(run_dir: Path, lora: LoraArgs | None = None, **changes) -> tuple[dict[str, torch.Tensor], Seen]:
    seen = Seen()
    args = toy_args(max_steps_per_stage=2, save_steps=2, **changes)
    train_stages(toy_stages(1, 4), model_name="tiny-random", lora=lora or LoraArgs(), args=args, run_dir=run_dir,
                 callbacks=[seen])
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors")), seen


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path):
    """Checkpointing recomputes activations: the same maths, so the same adapter (LoRA dropout off,
    whose masks are drawn differently under recomputation)."""
    lora = LoraArgs(dropout=0.0)
    plain, seen_plain = _train(tmp_path / "plain", lora=lora)
    ckpt, seen = _train(tmp_path / "ckpt", lora=lora, extra={"gradient_checkpointing": True})
    assert seen.checkpointing == [True] and seen_plain.checkpointing == [False]
    assert plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6) for k in plain)


def test_lora_extra_reaches_the_adapter_config(tmp_path):
    _train(tmp_path / "run", lora=LoraArgs(extra={"use_rslora": True}))
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True


def test_dtype_bfloat16_is_explicit(tmp_path):
    weights, seen = _train(tmp_path / "run", dtype="bfloat16")
    assert seen.bf16 == [True] and weights


@pytest.mark.parametrize("section, extra, fragment", [
    ("train", {"learning_rate": 1.0}, "train.extra.learning_rate: set it as train.learning_rate instead"),
    ("train", {"output_dir": "x"}, "promptintern sets it itself"),
    ("lora", {"lora_alpha": 8}, "set it as lora.alpha instead"),
])
def test_extra_refuses_what_promptintern_names_itself(section, extra, fragment):
    cls = TrainArgs if section == "train" else LoraArgs
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        from_dict(cls, {"extra": extra}, where=section)


@pytest.mark.parametrize("changes, fragment", [
    ({"train": {"extra": {"gradient_checkpointin": True}}}, "train.extra: "),
    ({"train": {"extra": {"fsdp": "nonsense"}}}, "train.extra: Unknown `fsdp` option"),
    ({"lora": {"extra": {"use_rslorra": True}}}, "lora.extra: "),
])
def test_bad_passthrough_is_one_line_before_any_write(tmp_path, capsys, changes, fragment):
    cfg = tiny_run_config(tmp_path / "run")
    for section, value in changes.items():
        cfg[section] = {**cfg.get(section, {}), **value}
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_identity_ignores_the_new_fields_at_their_defaults():
    """Runs made before extra/dtype existed keep their fingerprints (and so still resume)."""
    from promptintern.identity import identity_view

    assert not {"extra", "dtype"} & set(identity_view(TrainArgs()))
    assert "extra" not in identity_view(LoraArgs())
    assert identity_view(TrainArgs(extra={"gradient_checkpointing": True}))["extra"] == {"gradient_checkpointing": True}
