"""User-defined tasks from a YAML spec: a template, a prompt format and JSONL splits.

A spec names its template text inline or by file and its data files by path; relative paths
are relative to the YAML file, so a task directory can be moved as a whole. Data records are
JSON objects with ``query`` and ``answer`` (strings), an optional ``id``, and any other fields,
which are kept in :attr:`Instance.meta` (``pass@1`` tasks need a ``test_list`` of asserts).

``metric`` is a built-in name or a user's ``module:function`` (see :mod:`..evaluate.metrics`),
checked when the spec loads: the function is imported then, and ``sql_execution`` needs a
``database`` file, whose path every instance then carries in ``meta["database"]``.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import ConfigError, DataError
from ..io import iter_jsonl, write_text
from ..prompt import PromptFormat, Template
from .base import SPLITS, Instance, Task, check_split

METRICS = ("bleu", "exact_match", "pass@1", "sql_execution")  # or module:function
# Which placeholders each format may (and must) use; anything else is never filled.
FORMAT_PLACEHOLDERS = {
    "example_format": ("query", "answer"),
    "query_format": ("query",),
    "answer_format": ("answer",),
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DEFAULT_FORMAT = PromptFormat()


@dataclass
class TaskSpec:
    """The fields of a task YAML file."""

    name: str = field(metadata={"help": "Task name (letters, digits, '_', '.', '-'); prefixes default ids."})
    metric: str = field(
        default="exact_match",
        metadata={"help": "bleu | exact_match | pass@1 (needs a test_list in every record) | sql_execution "
                          "(needs 'database') | module:function (your own: see evaluate.metrics)."},
    )
    database: str | None = field(
        default=None, metadata={"help": "SQLite file the sql_execution metric runs queries on (read-only)."}
    )
    instruction: str | None = field(default=None, metadata={"help": "Instruction text of the template."})
    instruction_file: str | None = field(
        default=None, metadata={"help": "File holding the instruction (instead of 'instruction')."}
    )
    documentation: str | None = field(default=None, metadata={"help": "Documentation text of the template."})
    documentation_file: str | None = field(
        default=None, metadata={"help": "File holding the documentation (instead of 'documentation')."}
    )
    system: str = field(default=_DEFAULT_FORMAT.system, metadata={"help": "System message ('' for none)."})
    examples_header: str = field(
        default=_DEFAULT_FORMAT.examples_header, metadata={"help": "Line above the few-shot examples."}
    )
    example_format: str = field(
        default=_DEFAULT_FORMAT.example_format,
        metadata={"help": "Layout of one example; placeholders {query} and {answer}."},
    )
    query_format: str = field(
        default=_DEFAULT_FORMAT.query_format, metadata={"help": "Layout of the query; placeholder {query}."}
    )
    answer_format: str = field(
        default=_DEFAULT_FORMAT.answer_format,
        metadata={"help": "Layout of the answer (also inside examples); placeholder {answer}."},
    )
    force_keep: list[str] = field(
        default_factory=list, metadata={"help": "Strings a template compressor must never drop."}
    )
    data: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "JSONL file per split: {train: ..., validation: ..., test: ...}."},
    )

    @classmethod
    def from_dict(cls, raw: Any, source: str = "task spec") -> TaskSpec:
        """A validated spec from parsed YAML; every problem is a one-line :class:`ConfigError`."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of task fields, got {type(raw).__name__}")
        hints = get_type_hints(cls)
        valid = [f.name for f in fields(cls)]
        for key, value in raw.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {key!r}{_suggest(str(key), valid)}; valid keys: {', '.join(valid)}")
            if not _type_ok(value, hints[key]):
                raise ConfigError(f"{source}: {key} must be {_describe(hints[key])}, got {type(value).__name__}")
        if "name" not in raw:
            raise ConfigError(f"{source}: missing required key 'name'")
        spec = cls(**raw)
        spec.validate(source)
        return spec

    def validate(self, source: str = "task spec") -> None:
        """Check values that types alone do not catch."""
        if not NAME_RE.match(self.name):
            raise ConfigError(f"{source}: name {self.name!r} may only use letters, digits, '_', '.', '-'")
        from ..evaluate.metrics import check_metric_name  # lazy: evaluate imports tasks

        check_metric_name(self.metric, source)
        if self.metric == "sql_execution" and not self.database:
            raise ConfigError(f"{source}: metric sql_execution needs 'database: path/to/file.sqlite'")
        for part in ("instruction", "documentation"):
            if getattr(self, part) is not None and getattr(self, f"{part}_file") is not None:
                raise ConfigError(f"{source}: give either {part} or {part}_file, not both")
        for key, allowed in FORMAT_PLACEHOLDERS.items():
            check_placeholders(getattr(self, key), key, allowed, source)
        for split in self.data:
            if split not in SPLITS:
                raise ConfigError(
                    f"{source}: unknown data split {split!r}{_suggest(split, SPLITS)}; choose among {', '.join(SPLITS)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (``name`` and ``metric`` always), in field order."""
        defaults = TaskSpec(name=self.name)
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("name", "metric") or value != getattr(defaults, f.name):
                out[f.name] = value
        return out


def check_placeholders(fmt: str, key: str, allowed: tuple[str, ...], source: str) -> None:
    """Fail unless ``fmt`` uses exactly the ``allowed`` placeholders (each at least once)."""
    try:
        used = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"{source}: {key} is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from exc
    for name in used:
        if name not in allowed:
            shown = "{" + name + "}"
            raise ConfigError(
                f"{source}: {key} uses placeholder {shown}, which is never filled; allowed: "
                + ", ".join("{" + a + "}" for a in allowed)
            )
    missing = [a for a in allowed if a not in used]
    if missing:
        raise ConfigError(f"{source}: {key} must contain {{{missing[0]}}}")


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_ok(value: Any, tp: Any) -> bool:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, get_args(tp)[0]) for v in value)
    if origin is dict:
        kt, vt = get_args(tp)
        return isinstance(value, dict) and all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    if get_origin(tp) is list:
        return "a list of strings"
    if get_origin(tp) is dict:
        return "a mapping of split name to file path"
    return "a string"


class CustomTask(Task):
    """A task defined by a :class:`TaskSpec`; files are resolved against ``base_dir``."""

    def __init__(self, spec: TaskSpec, base_dir: str | os.PathLike[str] = ".", source: str | None = None) -> None:
        self.source = source or spec.name
        spec.validate(self.source)
        self.spec = spec
        self.base_dir = Path(base_dir)
        self.name = spec.name
        self.metric = spec.metric
        self.template = Template(
            instruction=self._text("instruction"), documentation=self._text("documentation")
        )
        self.format = PromptFormat(
            system=spec.system,
            examples_header=spec.examples_header,
            example_format=spec.example_format,
            query_format=spec.query_format,
            answer_format=spec.answer_format,
        )
        self.force_keep = tuple(spec.force_keep)
        self.database = self._database()
        self._check_data_files()
        self._check_metric()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> CustomTask:
        """Load and validate a task spec file."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"task spec not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{p}{where}: invalid YAML: {problem}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start})") from exc
        if raw is None:
            raise ConfigError(f"{p}: empty task spec; it needs at least 'name' and 'data'")
        return cls(TaskSpec.from_dict(raw, str(p)), p.parent, str(p))

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        """The spec as YAML; with ``path``, also written there (relative paths rebased onto it)."""
        spec = self.spec.to_dict()
        if path is not None:
            new_dir = Path(path).parent
            for key in ("instruction_file", "documentation_file", "database"):
                if key in spec:
                    spec[key] = _rebase(spec[key], self.base_dir, new_dir)
            if "data" in spec:
                spec["data"] = {s: _rebase(p, self.base_dir, new_dir) for s, p in spec["data"].items()}
        text = yaml.dump(spec, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)
        if path is not None:
            write_text(path, text)
        return text

    def load_split(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> list[Instance]:
        """The records of ``split``. ``data_dir`` is ignored: data paths belong to the spec."""
        check_split(split)
        if split not in self.spec.data:
            raise DataError(f"{self.source}: task {self.name!r} has no {split!r} data (add it under 'data:')")
        path = self._path(self.spec.data[split])
        required = ("query", "answer", "test_list") if self.metric == "pass@1" else ("query", "answer")
        out: list[Instance] = []
        seen: set[str] = set()
        for n, rec in enumerate(iter_jsonl(path, required=required)):
            out.append(self._instance(rec, split, n, path))
            if out[-1].id in seen:
                raise DataError(f"{path}: record {n + 1}: duplicate id {out[-1].id!r}")
            seen.add(out[-1].id)
        if not out:
            raise DataError(f"{path}: no records (the {split!r} data of task {self.name!r} is empty)")
        return out

    def _instance(self, rec: dict[str, Any], split: str, n: int, path: Path) -> Instance:
        for key in ("query", "answer"):
            if not isinstance(rec[key], str):
                raise DataError(f"{path}: record {n + 1}: {key} must be a string, got {type(rec[key]).__name__}")
        if "test_list" in rec and not (
            isinstance(rec["test_list"], list) and all(isinstance(t, str) for t in rec["test_list"])
        ):
            raise DataError(f"{path}: record {n + 1}: test_list must be a list of strings")
        rid = rec.get("id", f"{self.name}-{split}-{n}")
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise DataError(f"{path}: record {n + 1}: id must be a string or an integer")
        meta = {k: v for k, v in rec.items() if k not in ("id", "query", "answer")}
        if self.database is not None:
            meta["database"] = str(self.database)
        return Instance(id=str(rid), query=rec["query"], answer=rec["answer"], meta=meta)

    def _text(self, part: str) -> str:
        inline = getattr(self.spec, part)
        file = getattr(self.spec, f"{part}_file")
        if file is None:
            return (inline or "").strip()
        p = self._path(file)
        try:
            return p.read_text(encoding="utf-8").strip()
        except FileNotFoundError as exc:
            raise ConfigError(f"{self.source}: {part}_file {file!r} not found (looked for {p})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start})") from exc

    def _database(self) -> Path | None:
        if self.spec.database is None:
            return None
        path = self._path(self.spec.database)
        if not path.is_file():
            raise ConfigError(f"{self.source}: database {self.spec.database!r} not found (looked for {path})")
        return path

    def has_split(self, split: str) -> bool:
        return split in self.spec.data

    def split_source(self, split: str) -> str:
        return str(self._path(self.spec.data[split])) if split in self.spec.data else super().split_source(split)

    def _check_data_files(self) -> None:
        """A declared split whose file is missing fails when the spec loads, not when (or if) it is read."""
        for split, file in self.spec.data.items():
            path = self._path(file)
            if not path.is_file():
                raise ConfigError(f"{self.source}: {split} file {file!r} not found (looked for {path})")

    def _check_metric(self) -> None:
        """Import a ``module:function`` metric now, so a typo fails at load and not after training."""
        from ..evaluate.metrics import is_custom, load_metric

        if is_custom(self.metric):
            load_metric(self.metric, self.base_dir, self.source)

    def _path(self, p: str) -> Path:
        return (self.base_dir / Path(p).expanduser()).resolve()


def _rebase(p: str, old_dir: Path, new_dir: Path) -> str:
    """``p`` (relative to ``old_dir``) re-expressed relative to ``new_dir`` when possible."""
    target = Path(p).expanduser()
    if target.is_absolute():
        return str(target)
    full = (old_dir / target).resolve()
    try:
        return Path(os.path.relpath(full, new_dir.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return str(full)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|`` blocks so templates stay readable."""


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _str_presenter)
