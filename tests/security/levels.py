"""Run every attack case at every sandbox level and print a Markdown table (quoted in the README).

    python -m tests.security.levels            # from the project root, with the project's venv

The process level is the uncontained opt-in, so some cases escape there: that is the point of the
table, and why scoring refuses to use that level unless asked.
"""

from __future__ import annotations

import logging
import os
import sys

from promptintern.evaluate.sandbox import LEVELS, SandboxUnavailable, sandbox_capabilities

from .cases import CASES


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
