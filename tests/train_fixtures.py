"""Toy stages and a command line for training tests that need their own process.

``python tests/train_fixtures.py RUN_DIR [--kill-at STAGE:STEP] [--resume] [--keep] [--lr-span SPAN] [--hash-out DIR]``
trains the toy stages with :func:`toy_args`. ``--kill-at`` SIGKILLs the process right after
the Trainer saved checkpoint STEP of stage STAGE (a crash at a known point, without racing a
poller); ``--hash-out`` writes each rank's final in-memory adapter hash (for DDP tests).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from pathlib import Path

from promptintern.args import LoraArgs, TrainArgs
from promptintern.stages import Stage, StageRecord

TEMPLATE = "Instruction: add the two numbers of the request and answer with the sum only. " * 3


def toy_stages(n_stages: int = 3, n_records: int = 8) -> list[Stage]:
    """Stages whose prompts shrink like PromptIntern's: full template → shorter → query only."""
    stages = []
    for i in range(n_stages):
        tau = 1.0 - i / max(1, n_stages - 1)
        words = TEMPLATE.split()
        template = " ".join(words[: round(len(words) * tau)])
        records = [
            StageRecord(
                id=str(j),
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": (template + "\n\n" if template else "") + f"Request: {j} + {j + 3}"},
                ],
                answer=str(2 * j + 3),
            )
            for j in range(n_records)
        ]
        stages.append(Stage(index=i, tau=tau, k=0, records=records))
    return stages


def toy_args(**changes) -> TrainArgs:
    """6 steps per stage (crossing an epoch boundary with 8 records, batch 2), checkpoint every 2."""
    base = {"max_steps_per_stage": 6, "per_device_batch_size": 2, "save_steps": 2, "logging_steps": 1,
            "num_threads": 1, "learning_rate": 1e-3}
    return TrainArgs(**{**base, **changes})


def tiny_lora_model():
    """A private tiny-random model with a LoRA adapter whose B matrices are non-zero (so it takes part)."""
    import torch
    from peft import get_peft_model

    from promptintern.models import load_model

    base, tok = load_model("tiny-random", device="cpu")  # a private copy: LoRA layers are injected in place
    model = get_peft_model(base, LoraArgs(dropout=0.0).to_peft())
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return model, tok


def adapter_hash(model) -> str:
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model)
    h = hashlib.sha256()
    for key in sorted(sd):
        h.update(key.encode())
        h.update(sd[key].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    from transformers import TrainerCallback

    from promptintern.training import train_stages

    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--kill-at", default=None, help="STAGE:STEP")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--keep", action="store_true", help="optimizer_state=keep")
    p.add_argument("--lr-span", default="stage", help="train.lr_span")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--epochs", type=float, default=None, help="epochs per stage instead of 6 steps")
    p.add_argument("--hash-out", type=Path, default=None)
    a = p.parse_args(argv)

    class Hooks(TrainerCallback):
        model = None

        def on_save(self, args, state, control, **kwargs):
            if a.kill_at:
                stage, step = a.kill_at.split(":")
                if Path(args.output_dir).name == f"stage-{stage}" and state.global_step == int(step):
                    os.kill(os.getpid(), signal.SIGKILL)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            Hooks.model = model

    changes = {"optimizer_state": "keep"} if a.keep else {}
    changes["lr_span"] = a.lr_span
    if a.epochs is not None:
        changes.update(max_steps_per_stage=None, epochs_per_stage=a.epochs)
    train_stages(toy_stages(a.stages), model_name="tiny-random", lora=LoraArgs(), args=toy_args(**changes),
                 run_dir=a.run_dir, resume=a.resume, callbacks=[Hooks()])
    if a.hash_out is not None:
        rank = os.environ.get("RANK", "0")
        a.hash_out.mkdir(parents=True, exist_ok=True)
        (a.hash_out / f"rank-{rank}.txt").write_text(adapter_hash(Hooks.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
