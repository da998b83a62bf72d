"""Shared fixtures: the data directory (or a clean skip) and a small thread budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _find_data_dir() -> Path | None:
    env = os.environ.get("PROMPTINTERN_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    return next((c for c in candidates if (c / "mbpp").is_dir() or (c / "nl2bash").is_dir()), None)


@pytest.fixture(autouse=True, scope="session")
def _small_thread_budget() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("PROMPTINTERN_TEST_THREADS", "1")))


def _task_data(task: str, marker: str) -> Path:
    """The shared data directory if it holds ``task/marker``; skips the test otherwise."""
    found = _find_data_dir()
    if found is None or not (found / task / marker).is_file():
        pytest.skip(f"{task}/{marker} not found in the shared data (set PROMPTINTERN_DATA_DIR)")
    return found


@pytest.fixture(scope="session")
def mbpp_data_dir() -> Path:
    """A data directory holding mbpp/mbpp.jsonl; skips the test otherwise."""
    return _task_data("mbpp", "mbpp.jsonl")


@pytest.fixture(scope="session")
def nl2bash_data_dir() -> Path:
    """A data directory holding nl2bash/all.nl; skips the test otherwise."""
    return _task_data("nl2bash", "all.nl")


@pytest.fixture(scope="session")
def geoquery_data_dir() -> Path:
    """A data directory holding geoquery/geography.json (and its SQLite file); skips the test otherwise."""
    return _task_data("geoquery", "geography.json")


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random llama with the real SmolLM2 tokenizer (cached after first build).

    On the CPU in fp32 even where a GPU is visible: tests that compare logits, losses and
    gradients to 1e-5 need it. The pipeline tests train on the default device (a GPU if any).
    """
    from promptintern.models import load_model

    return load_model("tiny-random", device="cpu")
