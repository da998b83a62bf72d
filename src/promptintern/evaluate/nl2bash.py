"""NL2Bash scores: corpus BLEU (sacrebleu), exact match, and command-structure match.

BLEU tokenisation is a choice (the paper does not state it): we use sacrebleu's ``13a``, the
standard for detokenised text. It splits most punctuation (``|``, ``/``, ``{``, quotes) into tokens,
keeps a flag such as ``-l`` whole, and so scores commands at roughly the shell-token level;
``char`` would score character 4-grams, which rewards near-misses in file names. The tokenizer and
the full sacrebleu signature are reported with every score; ``tokenize`` picks another.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np
from sacrebleu.metrics import BLEU

DEFAULT_TOKENIZER = "13a"
SEPARATORS = frozenset({"|", "||", "&&", ";", "&", "|&", ";;", "(", ")"})
# Words that run the next non-flag word as a utility, with their flags that take a separate value.
PREFIX_ARG_FLAGS: dict[str, frozenset[str]] = {
    "xargs": frozenset({"-I", "-n", "-P", "-L", "-d", "-E", "-s", "-a"}),
    "exec": frozenset({"-a"}),
    "sudo": frozenset({"-u", "-g", "-C", "-h", "-p", "-U", "-D", "-r", "-t"}),
}
FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})  # find runs the next word until ; or +
_REDIRECT = re.compile(r"^[0-9]*[<>&|]+$")
_SHORT_FLAG = re.compile(r"^-[A-Za-z]+")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def clean_prediction(text: str) -> str:
    """The command in a model answer: the first fenced block's body if there is one, stripped."""
    m = _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def normalize_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after collapsing whitespace runs and trimming."""
    return normalize_whitespace(prediction) == normalize_whitespace(reference)


def _tokens(command: str) -> list[str]:
    text = command.replace("$(", " ( ").replace("`", " ; ")
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    try:
        return list(lex)
    except ValueError:  # unbalanced quotes: fall back to whitespace words
        return text.split()


def command_structure(command: str) -> tuple[str, ...]:
    """The utilities and flags of a command line in order, arguments dropped.

    Segments are split on ``|``, ``&&``, ``||``, ``;``, ``&`` and ``$( )``/backticks. A segment's
    first word (after ``VAR=value`` assignments) is a utility, and so is the first non-flag word
    after ``xargs``/``exec``/``sudo`` and after find's ``-exec``; a word starting with ``-`` is a
    flag (see :func:`_flag` for attached values); redirections and their targets are ignored.
    """
    out: list[str] = []
    expect_utility, in_exec, skip_next = True, False, False
    prefix: str | None = None  # the xargs/exec/sudo whose utility comes next
    for tok in _tokens(command):
        if skip_next:
            skip_next = False
        elif in_exec and tok in (";", "+"):
            in_exec = False
        elif tok in SEPARATORS:
            expect_utility, prefix = True, None
        elif _REDIRECT.match(tok):
            skip_next = True
        elif tok.startswith("-") and len(tok) > 1 and not expect_utility:
            out.append(_flag(tok))
            if tok in FIND_EXEC:
                in_exec, expect_utility = True, True
            elif prefix is not None and tok in PREFIX_ARG_FLAGS[prefix]:
                skip_next = True
        elif expect_utility and _ASSIGNMENT.match(tok):
            continue
        elif expect_utility or prefix is not None:
            name = tok.rsplit("/", 1)[-1] or tok
            out.append(name)
            expect_utility, prefix = False, name if name in PREFIX_ARG_FLAGS else None
    return tuple(out)


def _flag(tok: str) -> str:
    """``--opt=value`` -> ``--opt``; ``-k2,2`` -> ``-k`` (an attached value is an argument); ``-1`` stays."""
    if tok.startswith("--"):
        return tok.split("=", 1)[0]
    m = _SHORT_FLAG.match(tok)
    return m.group(0) if m else tok


def structure_match(prediction: str, reference: str) -> bool:
    """Same sequence of utilities and flags (arguments ignored)."""
    return command_structure(prediction) == command_structure(reference)


def make_bleu(tokenize: str = DEFAULT_TOKENIZER, sentence: bool = False) -> BLEU:
    """The BLEU scorer used everywhere here; ``sentence`` enables effective order for single lines."""
    return BLEU(tokenize=tokenize, effective_order=sentence)


def bleu_stats(predictions: Sequence[str], references: Sequence[str], tokenize: str = DEFAULT_TOKENIZER) -> np.ndarray:
    """Per-sentence sufficient statistics, shape (n, 2 + 2*4): hyp len, ref len, matches, totals.

    Summing any subset of rows and calling :func:`bleu_from_stats` gives that subset's corpus BLEU
    exactly, which is what makes bootstrap resampling cheap.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return np.zeros((0, 10), dtype=np.int64)
    metric = make_bleu(tokenize)
    return np.asarray(metric._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.int64)


def bleu_from_stats(stats: np.ndarray, tokenize: str = DEFAULT_TOKENIZER) -> float:
    """Corpus BLEU (0-100) of the rows of :func:`bleu_stats`."""
    if len(stats) == 0:
        return 0.0
    totals = np.asarray(stats).sum(axis=0)
    return float(make_bleu(tokenize)._compute_score_from_stats([int(v) for v in totals]).score)


def bleu(predictions: list[str], references: list[str], tokenize: str = DEFAULT_TOKENIZER) -> dict[str, Any]:
    """Corpus BLEU with per-item sentence BLEU and the sufficient statistics for bootstrapping.

    Returns ``bleu`` (0-100), ``bleu_tokenizer``, ``bleu_signature`` (sacrebleu's reproducibility
    string), ``per_item`` (sentence BLEU, effective order) and ``stats`` (see :func:`bleu_stats`).
    """
    corpus = make_bleu(tokenize)
    stats = bleu_stats(predictions, references, tokenize)
    score = corpus.corpus_score(list(predictions), [list(references)]).score if predictions else 0.0
    sentence = make_bleu(tokenize, sentence=True)
    per_item = [float(sentence.sentence_score(p, [r]).score) for p, r in zip(predictions, references, strict=True)]
    return {
        "bleu": float(score),
        "bleu_tokenizer": tokenize,
        "bleu_signature": str(corpus.get_signature()),
        "per_item": per_item,
        "stats": stats,
    }
