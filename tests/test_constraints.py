"""A fresh install gets what CI tested: constraints.txt pins it, the Makefile installs with it, and the
environment the tests run in holds exactly those versions (a drifted package fails here, by name)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
            out[canonicalize_name(req.name)] = spec.version
    return out


def test_every_makefile_install_goes_through_the_constraints():
    installs = [line for line in (ROOT / "Makefile").read_text().splitlines() if re.search(r"\bpip install\b", line)
                and "--upgrade pip" not in line]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert re.search(r"^CONSTRAINTS := constraints.txt$", (ROOT / "Makefile").read_text(), re.M)


def test_the_installed_packages_are_the_pinned_versions():
    pinned = pins()
    assert {"torch", "transformers", "peft", "fastapi", "uvicorn", "openai"} <= set(pinned)
    drift = {}
    for name, want in pinned.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            continue  # an optional extra not installed here (e.g. llama-cpp-python)
        if have.split("+")[0] != want:
            drift[name] = f"{have} installed, {want} pinned"
    assert not drift, f"the environment differs from constraints.txt: {drift}"
