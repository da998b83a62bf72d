"""The documentation site: it builds in strict mode, its generated references cover the code, and the
README's results table still says what the committed results.json files say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from promptintern.cli import build_parser
from promptintern.config import RunConfig
from promptintern.configtools import describe

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _commands(parser, prefix: str = "") -> list[str]:
    import argparse

    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names.append(prefix + name)
                names += _commands(sub, prefix + name + " ")
    return names


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    t0 = time.perf_counter()
    done = _mkdocs(["build", "--strict", "--site-dir", str(out)], ROOT)
    print(f"strict build: {time.perf_counter() - t0:.1f} s")
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_strict_build_covers_every_config_field_and_command(site):
    config = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    missing = [key for key, _, _ in describe(RunConfig) if f"<code>{key}</code>" not in config]
    assert not missing, f"config fields missing from the reference: {missing}"
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    commands = _commands(build_parser())
    assert {"run", "compare", "data download"} <= set(commands)
    missing = [c for c in commands if f"promptintern {c}</code>" not in cli]
    assert not missing, f"commands missing from the CLI reference: {missing}"
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "evaluate_file" in api and "load_config" in api


def test_strict_build_renders_every_committed_result(site):
    results = sorted((ROOT / "bench" / "results").glob("*/results.json"))
    assert results
    overview = (site / "results" / "index.html").read_text(encoding="utf-8")
    for path in results:
        page = site / "results" / path.parent.name / "index.html"
        assert page.is_file(), page
        data = json.loads(path.read_text(encoding="utf-8"))
        for method, s in data["accuracy"]["methods"].items():
            assert f"{s['mean']:.2f}" in page.read_text(encoding="utf-8"), (path, method)
        assert f"{path.parent.name}/" in overview
        for plot in data.get("plots", []):
            assert (page.parent / plot).is_file(), plot
    assert (site / "figures" / "prompt-stages.svg").read_text().count("<rect") >= 3
    assert "<!-- generated:" not in overview  # every marker was replaced


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The site's own link checks, on a page with a missing target and a missing anchor."""
    ours = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[a page](other.md#nowhere)\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n[gone](missing.md)\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump({"site_name": "t", "strict": True,
                                                         "validation": ours["validation"]}))
    done = _mkdocs(["build", "--strict", "--site-dir", str(tmp_path / "site")], tmp_path)
    assert done.returncode != 0
    assert "missing.md" in done.stderr and "#nowhere" in done.stderr


def _check_cells(label: str, cells: list[str], acc: dict, methods: tuple[str, ...], method: str,
                 refs: tuple[str, ...]) -> None:
    """``cells``: each of ``methods``' mean, then ``method``'s difference to each of ``refs`` with its
    interval, as results.json's ``accuracy`` has them; a method without results reads 'running' or '–'."""
    for cell, m in zip(cells[:len(methods)], methods, strict=True):
        want = f"{acc['methods'][m]['mean']:.2f}" if m in acc["methods"] else None
        assert cell == want if want else cell in ("running", "–"), (label, m, cell, want)
    for cell, ref in zip(cells[len(methods):len(methods) + len(refs)], refs, strict=True):
        d = acc["differences"].get(method, {}).get(ref)
        want = f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]".replace("-", "−") if d else "–"
        assert cell == want, (label, ref, cell, want)


def test_readme_results_table_matches_results_json():
    """The README's one table is written by hand: each number is checked against results.json, and a
    method without results there is marked as not measured ('running' or '–')."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {"NL2Bash": "compare-nl2bash-converge", "GeoQuery query split": "compare-geoquery-query-converge",
            "GeoQuery question split": "compare-geoquery-question-converge"}
    for label, folder in rows.items():
        row = re.search(rf"^\| {label} \(.*\|$", text, re.M)
        assert row, f"the README's results table has no {label} row"
        cells = [c.strip().strip("*") for c in row.group(0).strip("|").split("|")][1:]
        acc = json.loads((ROOT / "bench" / "results" / folder / "results.json").read_text())["accuracy"]
        _check_cells(label, cells, acc, ("full-prompt", "query-only", "compressed", "promptintern"), "promptintern",
                     ("full-prompt", "query-only"))


def test_readme_teacher_table_matches_results_json():
    """The README's table of the '+teacher' methods: each method's mean, the two differences and the
    kept teacher answers (seed 0) as results.json has them; a method without results says 'running'."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = {"NL2Bash": "compare-nl2bash-converge", "GeoQuery query split": "compare-geoquery-query-converge"}
    methods = ("full-prompt", "query-only", "query-only+teacher", "promptintern", "promptintern+teacher")
    for label, folder in rows.items():
        row = re.search(rf"^\| {label} \(.*\| (\d+|–) of \d+ \|$", text, re.M)
        assert row, f"the README's teacher table has no {label} row"
        cells = [c.strip() for c in row.group(0).strip("|").split("|")][1:]
        results = json.loads((ROOT / "bench" / "results" / folder / "results.json").read_text())
        _check_cells(label, cells, results["accuracy"], methods, "promptintern+teacher", ("query-only", "full-prompt"))
        seed0 = results["teacher_data"]["seeds"]["0"]["counts"]
        assert cells[7] == f"{seed0['kept']} of {seed0['answered']}", (label, cells[7])
