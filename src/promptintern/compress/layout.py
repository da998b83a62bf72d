"""The units of a text and the structure that ties them: words, list and heading markers, code fences.

Both word-level compression (:mod:`.selfinfo`) and the statement-level units for schemas and code
(:mod:`.structure`) build on this split, so it lives apart from either: a unit is a word with its
leading whitespace, a marker is kept exactly when its line keeps a word, a code fence exactly when
its block does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD = re.compile(r"\s*\S+")
MARKER = re.compile(r"(?:[-*+•>]|#{1,6}|\d{1,3}[.)]|\(?[A-Za-z0-9]\))")
FENCE = re.compile(r"\s*(?:```|~~~)")


@dataclass(frozen=True)
class Unit:
    """A word with its leading whitespace: ``text[start:end]``; the word itself starts at ``word``."""

    start: int
    word: int
    end: int
    line: int
    kind: str  # "word" | "marker" (list/heading marker) | "fence" (code fence line)


@dataclass
class Layout:
    """The units of a text and the structure that ties them together.

    ``groups[g]`` are units kept together (a line's marker, a code block's two fences);
    ``needs[u]`` are the groups that keeping unit ``u`` brings along.
    """

    text: str
    lines: list[tuple[int, int]]
    units: list[Unit]
    groups: list[list[int]]
    needs: list[tuple[int, ...]]


def layout(text: str) -> Layout:
    """Split ``text`` into units and structural groups (pure; see the module docstring)."""
    lines: list[tuple[int, int]] = []
    pos = 0
    for raw in text.split("\n"):
        lines.append((pos, pos + len(raw)))
        pos += len(raw) + 1
    units: list[Unit] = []
    groups: list[list[int]] = []
    needs: list[tuple[int, ...]] = []
    fence_group: int | None = None  # the open code block's group, if inside one
    for li, (a, b) in enumerate(lines):
        line = text[a:b]
        matches = list(WORD.finditer(line))
        if not matches:
            continue
        if FENCE.match(line):
            opening = fence_group is None
            if opening:  # a new code block; its closing fence joins the same group
                groups.append([])
                fence_group = len(groups) - 1
            for m in matches:
                groups[fence_group].append(len(units))
                units.append(Unit(a + m.start(), a + m.end() - len(m.group().lstrip()), a + m.end(), li, "fence"))
                needs.append((fence_group,))
            if not opening:
                fence_group = None
            continue
        outer = () if fence_group is None else (fence_group,)
        line_needs = outer
        for i, m in enumerate(matches):
            word = a + m.end() - len(m.group().lstrip())
            if i == 0 and len(matches) > 1 and MARKER.fullmatch(m.group().strip()):
                groups.append([len(units)])
                line_needs = (*outer, len(groups) - 1)
                units.append(Unit(a + m.start(), word, a + m.end(), li, "marker"))
                needs.append(line_needs)
                continue
            units.append(Unit(a + m.start(), word, a + m.end(), li, "word"))
            needs.append(line_needs)
    return Layout(text, lines, units, groups, needs)
