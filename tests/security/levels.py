"""Run every attack case and forgery at every sandbox level and print a Markdown table (docs/security.md).

    python -m tests.security.levels            # from the project root, with the project's venv

The process level is the uncontained opt-in, so some cases escape there: that is the point of the
table, and why scoring refuses to use that level unless asked.
"""

from __future__ import annotations

import logging
import os
import sys

from promptintern.evaluate.sandbox import LEVELS, SandboxUnavailable, sandbox_capabilities

from .cases import CASES, submit
from .forgeries import FAKES


def main() -> int:
    logging.disable(logging.WARNING)
    uid = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    print(f"| case | what it tries | {' | '.join(f'{lvl} ({uid})' for lvl in LEVELS)} |")
    print(f"|---|---|{'---|' * len(LEVELS)}")
    available = {}
    for level in LEVELS:
        try:
            sandbox_capabilities(level=level)
            available[level] = True
        except SandboxUnavailable as exc:
            available[level] = False
            print(f"<!-- {level}: refused: {exc} -->", file=sys.stderr)
    for case in CASES:
        cells = []
        for level in LEVELS:
            if not available[level]:
                cells.append("refuses to score")
                continue
            if case.harms_uncontained and level != "bwrap":
                cells.append("not run (would harm this machine)")
                continue
            out = case.run(level)
            cells.append("contained" if out.contained else f"**escaped**: {out.evidence[:80]}")
        print(f"| {case.name} | {case.what} | {' | '.join(cells)} |", flush=True)
    for name, code in sorted(FAKES.items()):
        cells = []
        for level in LEVELS:
            if not available[level]:
                cells.append("refuses to score")
                continue
            res, _ = submit(level, code)
            cells.append(f"scored {res.status}" if res.status != "passed" else "**scored passed**")
        print(f"| {name} | in-process forgery by a wrong add() | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
