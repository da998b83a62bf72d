"""MBPP pass@1: does the generated program pass the task's asserts? Executed only in the sandbox.

Each prediction runs in its own sandbox (see :mod:`.sandbox`); runs are independent subprocesses,
so a thread pool around them uses all cores. A missing prediction counts as a failure.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..progress import progress_bar
from ..tasks.base import Instance
from .sandbox import Sandbox, SandboxLimits, SandboxResult

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("python", "python3", "py")
STDERR_KEPT = 400  # characters of a failing run's stderr kept in the per-item record


def extract_code(prediction: str) -> str:
    """The program in a model answer: the first ```python block, else the first ``` block, else the text.

    An unterminated fence (generation cut off by the token limit) still yields its body.
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(prediction)]
    for tag, body in blocks:
        if tag in _PYTHON_TAGS:
            return body.strip("\n")
    if blocks:
        return blocks[0][1].strip("\n")
    return prediction.strip("\n")


def _sandbox(timeout_s: float, level: str = "bwrap") -> Sandbox:
    return Sandbox(SandboxLimits(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s))), level=level)


def run_program(code: str, test_setup_code: str, test_list: Iterable[str], timeout_s: float = 10.0,
                sandbox: Sandbox | None = None) -> SandboxResult:
    """Score ``code`` against the asserts: the candidate's calls run in a sandbox, the asserts here (see :mod:`.oracle`)."""
    sb = sandbox or _sandbox(timeout_s)
    return sb.run_checks(code, list(test_list), setup=test_setup_code or "")


def check_program(code: str, test_setup_code: str, test_list: Iterable[str], timeout_s: float = 10.0) -> bool:
    """True iff ``code`` passes every assert of ``test_list`` within ``timeout_s`` (in the sandbox)."""
    return run_program(code, test_setup_code, test_list, timeout_s).status == "passed"


def _item(result: SandboxResult | None) -> dict[str, Any]:
    if result is None:
        return {"passed": False, "status": "missing"}
    rec: dict[str, Any] = {"passed": result.status == "passed", "status": result.status,
                           "wall_s": round(result.wall_s, 3), "oracle": result.oracle}
    if result.status != "passed":
        rec["detail"] = result.detail
        rec["stderr"] = result.stderr[-STDERR_KEPT:]
    return rec


def pass_at_1(
    predictions: dict[str, str],
    instances: list[Instance],
    workers: int | None = None,
    timeout_s: float = 10.0,
    progress: bool = False,
    sandbox_level: str = "bwrap",
) -> dict[str, Any]:
    """pass@1 (percent) of one greedy prediction per instance, with a record per item.

    Predictions go through :func:`extract_code`; instance ``meta`` must hold ``test_list`` (and
    optionally ``test_setup_code``). ``workers`` defaults to the CPU count. ``sandbox_level``:
    ``bwrap`` (contained; raises :class:`~.sandbox.SandboxUnavailable` before anything runs where
    it cannot be established) or ``process`` (the user's explicit, uncontained opt-in).
    """
    sandbox = _sandbox(timeout_s, sandbox_level)
    caps = sandbox.capabilities  # probe once, before the pool starts; refuses here, not per item
    todo = [inst for inst in instances if inst.id in predictions]
    for inst in todo:
        if "test_list" not in inst.meta:
            raise ValueError(f"instance {inst.id!r} has no test_list in its meta; pass@1 needs asserts")

    def run(inst: Instance) -> SandboxResult:
        code = extract_code(predictions[inst.id])
        return run_program(code, inst.meta.get("test_setup_code", ""), inst.meta["test_list"], timeout_s, sandbox)

    results: dict[str, SandboxResult] = {}
    n_workers = max(1, workers or os.cpu_count() or 1)
    bar = progress_bar("MBPP sandbox", "{task.fields[passed]} passed", progress)
    task = bar.add_task("sandbox", total=len(todo), passed=0)
    with ThreadPoolExecutor(max_workers=n_workers) as pool, bar:
        for inst, res in zip(todo, pool.map(run, todo), strict=True):
            results[inst.id] = res
            bar.update(task, advance=1, passed=sum(r.status == "passed" for r in results.values()))
    per_item = {inst.id: _item(results.get(inst.id)) for inst in instances}
    passed = sum(rec["passed"] for rec in per_item.values())
    n = len(instances)
    return {
        "pass@1": 100.0 * passed / n if n else 0.0,
        "n": n,
        "passed": passed,
        "missing": n - len(todo),
        "status_counts": dict(Counter(rec["status"] for rec in per_item.values())),
        "oracle_fallback": sum(rec.get("oracle") == "fallback" for rec in per_item.values()),
        "sandbox_level": caps.level,
        "sandbox_contained": caps.contained,
        "per_item": per_item,
    }
