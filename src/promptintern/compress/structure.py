"""Structure-aware units for code- and schema-like documentation, and identifiers worth protecting.

Word-level compression suits prose but wrecks a schema: at τ = 0.5 it happily drops ``TABLE``
from ``CREATE TABLE``, a closing parenthesis or a column. Two stricter units (ours):

- ``lines``: every *statement* is kept or dropped whole. A statement is a line, joined with the
  lines after it while a bracket is open, the line ends in ``,`` or ``\\``, or the next lines are
  indented deeper (a body). A trailing comment (``-- …``, ``# …``, ``// …``) goes with its
  statement but may be dropped alone; a full-line comment or a prose line is a unit of its own.
- ``comments``: statements are never touched; only comments and prose lines lose words.

Which lines are statements: those inside a code fence, and those with a bracket, ``;`` or ``=``
outside inline `code` (``- employees(id INTEGER, …)``, ``CREATE TABLE t (``); the rest is prose. A
statement that continues on an equally indented line without an open bracket (``SELECT a`` /
``FROM b;``) is not joined: write such statements on one line or with brackets.

:func:`answer_identifiers` picks the names a template must keep because the training answers
use them (tables, columns, functions, flags); :mod:`~promptintern.compress.selfinfo` treats them
like ``force_keep`` strings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .layout import FENCE, MARKER, WORD, Layout, Unit

_CODE_CHARS = re.compile(r"[()\[\]{};=]")
_BACKTICKS = re.compile(r"`[^`\n]+`")
_COMMENT = re.compile(r"(?:^|(?<=\s))(?:--|//|#)(?=\s|$)")
_OPEN, _CLOSE = "([{", ")]}"
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_IDENT = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*|[A-Za-z_]\w*)")
# Function words that an answer shares with any English text; never worth protecting.
_COMMON = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "if", "in", "into", "is", "it", "of",
    "on", "or", "the", "to", "with", "not", "no", "this", "that", "then", "than", "all", "any", "each",
    "per", "use", "used", "using", "only",
})


def is_code_line(line: str, in_fence: bool = False) -> bool:
    """Whether ``line`` reads as a statement rather than prose (see the module docstring); a
    prose sentence with inline `code` stays prose."""
    code = _BACKTICKS.sub("", _split_comment(line)[0])
    return bool(code.strip()) and (in_fence or bool(_CODE_CHARS.search(_QUOTED.sub("''", code))))


def code_text(text: str) -> str:
    """The parts of ``text`` written as code: its statements (:func:`statements`) and inline `code`."""
    lines = text.split("\n")
    in_statement = {li for block in statements(text) for li in block}
    return "\n".join(line if li in in_statement else " ".join(m.group() for m in _BACKTICKS.finditer(line))
                     for li, line in enumerate(lines))


def _split_comment(line: str) -> tuple[str, str]:
    """``line`` as (code, trailing comment), the comment starting at a marker outside quotes."""
    masked = _QUOTED.sub(lambda m: "x" * len(m.group()), line)
    m = _COMMENT.search(masked)
    return (line, "") if m is None else (line[: m.start()], line[m.start():])


def _depth_change(code: str) -> int:
    masked = _QUOTED.sub("", code)
    return sum(masked.count(c) for c in _OPEN) - sum(masked.count(c) for c in _CLOSE)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def statements(text: str) -> list[list[int]]:
    """Line indices of each statement of ``text`` (code lines only; see the module docstring)."""
    lines = text.split("\n")
    fence = [False] * len(lines)
    inside = False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            inside = not inside
        elif inside:
            fence[i] = True
    out: list[list[int]] = []
    i = 0
    while i < len(lines):
        if not is_code_line(lines[i], fence[i]):
            i += 1
            continue
        block, depth, base = [i], _depth_change(_split_comment(lines[i])[0]), _indent(lines[i])
        j = i + 1
        while j < len(lines) and lines[j].strip() and not FENCE.match(lines[j]):
            prev = _split_comment(lines[block[-1]])[0].rstrip()
            if depth > 0 or prev.endswith((",", "\\")) or _indent(lines[j]) > base:
                block.append(j)
                depth += _depth_change(_split_comment(lines[j])[0])
                j += 1
            else:
                break
        out.append(block)
        i = j
    return out


def structured_layout(text: str, mode: str) -> tuple[Layout, set[int]]:
    """Units of ``text`` for ``mode`` (``lines`` or ``comments``) and the units that must stay.

    Statements become one group of per-line units (taking one line takes them all); trailing
    comments need their statement's group. In ``lines`` mode every other line is a whole unit;
    in ``comments`` mode comment and prose words are units and statements are returned as kept.
    """
    if mode not in ("lines", "comments"):
        raise ValueError(f"unknown structure {mode!r}")
    lines: list[tuple[int, int]] = []
    pos = 0
    for raw in text.split("\n"):
        lines.append((pos, pos + len(raw)))
        pos += len(raw) + 1
    stmt_of = {li: k for k, block in enumerate(statements(text)) for li in block}
    units: list[Unit] = []
    groups: list[list[int]] = []
    needs: list[tuple[int, ...]] = []
    must: set[int] = set()
    stmt_group: dict[int, int] = {}
    fence_group: int | None = None

    def add(start: int, word: int, end: int, li: int, kind: str, need: tuple[int, ...]) -> int:
        units.append(Unit(start, word, end, li, kind))
        needs.append(need)
        return len(units) - 1

    def words(a: int, segment: str, li: int, need: tuple[int, ...]) -> None:
        """Word units; a leading comment or list marker is kept exactly when a word after it is."""
        matches = list(WORD.finditer(segment))
        for i, m in enumerate(matches):
            start, word, end = a + m.start(), a + m.end() - len(m.group().lstrip()), a + m.end()
            if i == 0 and len(matches) > 1 and (_COMMENT.fullmatch(m.group().strip())
                                                or MARKER.fullmatch(m.group().strip())):
                groups.append([add(start, word, end, li, "marker", need)])
                need = (*need, len(groups) - 1)
                continue
            add(start, word, end, li, "word", need)

    for li, (a, b) in enumerate(lines):
        line = text[a:b]
        if not line.strip():
            continue
        if FENCE.match(line):  # a fence is kept (with its partner) exactly when its block keeps a line
            if fence_group is None:
                groups.append([])
                fence_group = len(groups) - 1
                closing = False
            else:
                closing = True
            u = add(a, a + _indent(line), b, li, "fence", (fence_group,))
            groups[fence_group].append(u)
            if closing:
                fence_group = None
            continue
        outer = () if fence_group is None else (fence_group,)
        if li in stmt_of:
            k = stmt_of[li]
            if k not in stmt_group:
                groups.append([])
                stmt_group[k] = len(groups) - 1
            g = stmt_group[k]
            code, comment = _split_comment(line)
            code_end = a + len(code.rstrip())
            u = add(a, a + _indent(line), code_end, li, "word", (*outer, g))
            groups[g].append(u)
            if mode == "comments":
                must.add(u)
            if comment:
                if mode == "lines":
                    add(code_end, a + len(code) + (len(comment) - len(comment.lstrip())), b, li, "word", (*outer, g))
                else:
                    words(code_end, text[code_end:b], li, (*outer, g))
            continue
        if mode == "lines":
            add(a, a + _indent(line), b, li, "word", outer)
        else:
            words(a, line, li, outer)
    return Layout(text, lines, units, groups, needs), must


def answer_identifiers(answers: Iterable[str], text: str, limit: int = 500) -> list[str]:
    """Names used by the training ``answers`` that ``text`` mentions in a statement: tables,
    columns, functions, flags. Most frequent first, at most ``limit``.

    A name counts when it is identifier-shaped (``_``, a digit, an inner capital, ALL CAPS or a
    leading ``-``) or when the text writes it as code (:func:`code_text`); English function
    words never do.
    """
    counts: dict[str, int] = {}
    for answer in answers:
        for name in set(_IDENT.findall(answer)):
            if len(name.lstrip("-")) >= 2 and name not in _COMMON:  # SQL's FROM, IN stay
                counts[name] = counts.get(name, 0) + 1
    code = code_text(text)
    keep = []
    for name in sorted(counts, key=lambda n: (-counts[n], n)):
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        if not pattern.search(text):
            continue
        shaped = name.startswith("-") or "_" in name or any(c.isdigit() for c in name) or \
            (name.isupper() and len(name) > 1) or any(c.isupper() for c in name[1:])
        if shaped or pattern.search(code):
            keep.append(name)
        if len(keep) >= limit:
            break
    return keep
