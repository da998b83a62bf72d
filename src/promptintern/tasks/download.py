"""Fetch the public NL2Bash and MBPP files into a data directory (the layout the tasks read)."""

from __future__ import annotations

import http.client
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError, DataError
from ..io import atomic_path

# dataset -> {path under the data dir: upstream URL}
SOURCES: dict[str, dict[str, str]] = {
    "mbpp": {
        "mbpp/mbpp.jsonl": "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl",
    },
    "nl2bash": {
        "nl2bash/all.nl": "https://raw.githubusercontent.com/TellinaTool/nl2bash/master/data/bash/all.nl",
        "nl2bash/all.cm": "https://raw.githubusercontent.com/TellinaTool/nl2bash/master/data/bash/all.cm",
        "nl2bash/LICENSE": "https://raw.githubusercontent.com/TellinaTool/nl2bash/master/LICENSE",
    },
}
TIMEOUT_S = 15.0


def download(
    dest: str | Path,
    which: Iterable[str] = ("nl2bash", "mbpp"),
    *,
    overwrite: bool = False,
    timeout: float = TIMEOUT_S,
) -> list[Path]:
    """Download the files of the ``which`` datasets under ``dest``; returns the paths written.

    Files already present are kept unless ``overwrite``. Each file is written atomically, so an
    interrupted download never leaves a truncated file that the tasks would then read.
    """
    names = list(which)
    for name in names:
        if name not in SOURCES:
            raise ConfigError(f"unknown dataset {name!r}; choose among {', '.join(SOURCES)}")
    root = Path(dest).expanduser()
    written = []
    for name in names:
        for rel, url in SOURCES[name].items():
            target = root / rel
            if target.is_file() and not overwrite:
                continue
            _fetch(url, target, timeout, expected=list(SOURCES[name]), root=root)
            written.append(target)
    return written


def _fetch(url: str, target: Path, timeout: float, expected: list[str], root: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
            if tmp.stat().st_size == 0:
                raise DataError(f"downloaded an empty file from {url}")
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url} ({reason}); fetch {', '.join(expected)} by hand and put them under {root}"
        ) from exc
