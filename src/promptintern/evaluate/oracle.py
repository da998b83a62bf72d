"""The MBPP verdict, decided where the candidate's code cannot reach (used by :mod:`.sandbox`).

Why it exists: when the asserts run in the same process as the candidate's code, any route into
that process's memory (a garbage-collector frame walk, a subinterpreter, ``ctypes``, a tracing
hook, an object whose ``__eq__`` is always true) can forge the verdict. So the untrusted process
never sees an expected value and never decides anything. The parent splits each test with
:mod:`ast`:

* the **calls into the candidate's code** -- every outermost ``f(...)``, ``obj.attr``,
  ``f(x).method(y)`` chain whose root name neither the builtins nor the test's imports (nor the
  standard modules in :data:`PARENT_MODULES`) provide, or a builtin name the candidate redefines
  where it is the thing under test (the left side of the assert) -- are sent, as source text, to the
  sandbox, which evaluates them in the candidate's namespace and sends back their values as
  **data** (:func:`decode_values`): ``None``, bools, ints, floats, complex numbers, strings,
  bytes, lists, tuples, dicts, sets and frozensets, nested at most :data:`MAX_DEPTH` deep, at most
  :data:`MAX_NODES` values and :data:`MAX_WIRE_BYTES` bytes in all. A subclass of one of these is
  sent as its base type; anything else (a custom class, a generator, an object with its own
  ``__eq__``) is not data, and a test that uses it fails. An exception raised by the candidate is
  data too: its type name, re-raised in the parent when the test uses that value.
* the **rest of the test** -- comparisons, expected values, builtins such as ``set`` or ``sorted``
  around a call, the test's own imports -- is evaluated here, in the parent, with the decoded values
  substituted (:func:`judge`). The candidate can only claim what its functions returned.

**Fallback.** A test that cannot be split this way (a statement other than ``assert`` or
``import``, a comprehension, lambda or walrus inside the assert, a test that does not parse) is not
run at all: it counts as failed, and :func:`~.mbpp.pass_at_1` reports how many items used the
fallback (none of MBPP's 974 tasks do).

Evaluating the test's own expressions in the parent is safe because they come from the data set
(trusted, like the evaluator's code), and the candidate's values are plain, size-capped data.
"""

from __future__ import annotations

import ast
import builtins
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_WIRE_BYTES = 1 << 20  # the whole result message from the sandbox
MAX_DEPTH = 48  # nesting of containers in one value
MAX_NODES = 200_000  # values (container elements included) in one message
MAX_CODE_CHARS = 500_000  # longer candidate sources are not parsed here (their names count as unknown)
VALUE_FN = "__promptintern_value__"
# Standard modules a test may name without importing them (MBPP's ``sys.getsizeof``): always the
# parent's real module, even where the candidate imports (or shadows) the same name.
PARENT_MODULES = frozenset(("math", "cmath", "re", "sys", "collections", "itertools", "heapq", "functools",
                            "operator", "string", "decimal", "fractions", "statistics", "datetime"))
_UNSPLITTABLE = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda, ast.NamedExpr,
                 ast.Await, ast.Yield, ast.YieldFrom)


@dataclass(frozen=True)
class Raised:
    """The candidate's code raised while computing a value: only the exception's type name crosses."""

    type_name: str


@dataclass(frozen=True)
class NotData:
    """The value the candidate returned is not data (its type name, or why it could not be sent)."""

    why: str


class CandidateRaised(Exception):
    """Re-raised in the parent when a test uses a value whose computation raised in the sandbox."""


@dataclass(frozen=True)
class SplitTests:
    """A task's tests, split: ``calls`` run in the sandbox, ``checks`` and ``imports`` run here.

    ``fallback`` is non-empty (the reason) when the tests could not be split; then nothing runs and
    the item counts as failed.
    """

    calls: tuple[str, ...] = ()
    checks: tuple[tuple[str, ast.Expression], ...] = ()  # (the original assert's source, its test with placeholders)
    imports: tuple[ast.stmt, ...] = ()
    fallback: str = ""
    sandbox_imports: str = ""  # the tests' own import statements, also run in the sandbox (calls may use them)


def bound_names(source: str) -> set[str]:
    """Every name ``source`` binds anywhere (defs, classes, assignments, imports, globals, arguments).

    Over-counting is safe: a name counted here is only evaluated in the sandbox, as the original
    test would have. Unparsable or oversized sources bind nothing we can see.
    """
    if len(source) > MAX_CODE_CHARS:
        return set()
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return names


def _imports(source: str) -> list[ast.stmt]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]


def _imported(stmts: Iterable[ast.stmt]) -> set[str]:
    return {(a.asname or a.name).split(".")[0] for s in stmts for a in s.names}  # type: ignore[attr-defined]


def _root(node: ast.expr) -> ast.expr:
    """The name at the start of an ``a.b(c)[d].e(...)`` chain (or the first node that is not a link)."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _tested_name(test: ast.expr) -> str:
    """The root name of what an assert tests: the left side of its comparison (or the whole test)."""
    while isinstance(test, ast.UnaryOp):
        test = test.operand
    root = _root(test.left if isinstance(test, ast.Compare) else test)
    return root.id if isinstance(root, ast.Name) else ""


class _Splitter(ast.NodeTransformer):
    """Replaces each outermost chain rooted at a sandbox name by ``VALUE_FN(i)``; collects the chains."""

    def __init__(self, in_sandbox, calls: list[str]) -> None:
        self.in_sandbox, self.calls = in_sandbox, calls

    def visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.expr) and not isinstance(node, ast.Starred):
            root = _root(node)
            if isinstance(root, ast.Name) and self.in_sandbox(root.id):
                self.calls.append(ast.unparse(node))
                return ast.copy_location(ast.Call(ast.Name(VALUE_FN, ast.Load()), [ast.Constant(len(self.calls) - 1)], []),
                                         node)
        return super().visit(node)


def split_tests(tests: Sequence[str], setup: str = "", code: str = "") -> SplitTests:
    """Split ``tests`` (assert statements; imports allowed) into sandbox calls and parent checks.

    ``setup`` runs in the sandbox after ``code``; its imports are also run here, and the names it
    otherwise binds belong to the sandbox, like every name ``code`` binds.
    """
    setup_imports = _imports(setup)
    parsed: list[ast.Module] = []
    for test in tests:
        try:
            parsed.append(ast.parse(test))
        except SyntaxError as exc:
            return SplitTests(fallback=f"a test does not parse ({exc.msg})")
    test_imports = [s for m in parsed for s in m.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    imports = (*setup_imports, *test_imports)
    test_owned = PARENT_MODULES | _imported(imports)
    candidate_names = bound_names(code) | (bound_names(setup) - _imported(setup_imports))
    builtin_names = set(dir(builtins)) - {"__import__"}
    tested = {_tested_name(s.test) for m in parsed for s in m.body if isinstance(s, ast.Assert)}

    def in_sandbox(name: str) -> bool:
        # A builtin the candidate redefines is its own only as the thing under test (MBPP's ``sum``),
        # never on the expected side: ``== sorted([3, 1])`` must not be the candidate's to compute.
        if name in test_owned:
            return False
        if name in builtin_names:
            return name in candidate_names and name in tested
        return True

    calls: list[str] = []
    checks: list[tuple[str, ast.Expression]] = []
    for module in parsed:
        for stmt in module.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if not isinstance(stmt, ast.Assert):
                return SplitTests(fallback=f"a test holds a {type(stmt).__name__} statement, not only asserts")
            if any(isinstance(n, _UNSPLITTABLE) for n in ast.walk(stmt.test)):
                return SplitTests(fallback="an assert holds a comprehension, lambda or assignment expression")
            source = ast.unparse(stmt)
            test = _Splitter(in_sandbox, calls).visit(stmt.test)
            checks.append((source, ast.fix_missing_locations(ast.Expression(test))))
    used = {n.id for _, e in checks for n in ast.walk(e) if isinstance(n, ast.Name)}
    modules = tuple(ast.Import([ast.alias(m)]) for m in sorted(used & PARENT_MODULES - _imported(imports)))
    return SplitTests(tuple(calls), tuple(checks), (*modules, *imports),
                      sandbox_imports="\n".join(ast.unparse(s) for s in test_imports))


def decode_values(message: bytes, n: int) -> list[Any]:
    """The ``n`` values the sandbox sent (JSON of tagged values); ValueError if it is not exactly that.

    Tags: ``N`` None, ``T``/``F`` bools, ``i`` int (hex), ``f`` float (``float.hex``), ``c`` complex,
    ``s`` str, ``b`` bytes (hex), ``l``/``t``/``S``/``Z``/``d`` list, tuple, set, frozenset, dict
    (a list of pairs), ``E`` an exception's type name, ``!`` not data (why).
    """
    if len(message) > MAX_WIRE_BYTES:
        raise ValueError("result message too large")
    try:
        raw = json.loads(message.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"result message is not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, list) or len(raw) != n:
        raise ValueError(f"expected {n} values")
    budget = [MAX_NODES]
    try:
        return [_top(item, budget) for item in raw]
    except (TypeError, OverflowError, RecursionError) as exc:  # e.g. an unhashable set member
        raise ValueError(f"malformed value ({type(exc).__name__}: {exc})") from None


def _top(item: Any, budget: list[int]) -> Any:
    if isinstance(item, list) and len(item) == 2 and item[0] in ("E", "!") and isinstance(item[1], str):
        return Raised(item[1][:100]) if item[0] == "E" else NotData(item[1][:200])
    return _decode(item, 0, budget)


def _decode(item: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise ValueError("value too large or nested too deeply")
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError("malformed value")
    tag, args = item[0], item[1:]
    scalar = _scalar(tag, args)
    if scalar is not _NO:
        return scalar
    if tag == "d" and len(args) == 1 and isinstance(args[0], list):
        pairs = [(_decode(p[0], depth + 1, budget), _decode(p[1], depth + 1, budget))
                 for p in args[0] if isinstance(p, list) and len(p) == 2]
        if len(pairs) != len(args[0]):
            raise ValueError("malformed dict")
        return dict(pairs)
    if tag in _SEQUENCES and len(args) == 1 and isinstance(args[0], list):
        return _SEQUENCES[tag](_decode(x, depth + 1, budget) for x in args[0])
    raise ValueError(f"unknown value tag {tag!r}")


_NO = object()
_SEQUENCES = {"l": list, "t": tuple, "S": set, "Z": frozenset}


def _scalar(tag: str, args: list[Any]) -> Any:
    fixed = {"N": None, "T": True, "F": False}
    if tag in fixed and not args:
        return fixed[tag]
    if len(args) == 1 and isinstance(args[0], str):
        text = args[0]
        if tag == "i":
            return int(text, 16)
        if tag == "f":
            return float.fromhex(text)
        if tag == "s":
            return text
        if tag == "b":
            return bytes.fromhex(text)
    if tag == "c" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    return _NO


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str = ""


def judge(split: SplitTests, values: Sequence[Any]) -> Verdict:
    """Run the parent's half of every assert with ``values`` substituted; passed iff all hold."""
    if split.fallback:
        return Verdict(False, f"test not scored (fallback): {split.fallback}")

    def value(i: int) -> Any:
        v = values[i]
        if isinstance(v, Raised):
            raise CandidateRaised(v.type_name)
        if isinstance(v, NotData):
            raise CandidateRaised(f"not data: {v.why}")
        return v

    namespace: dict[str, Any] = {"__builtins__": builtins, VALUE_FN: value}
    try:
        module = ast.fix_missing_locations(ast.Module(list(split.imports), []))
        exec(compile(module, "<test imports>", "exec"), namespace)  # noqa: S102
    except Exception as exc:  # noqa: BLE001 - the data set's own import failed: nothing can pass
        return Verdict(False, f"test imports failed: {type(exc).__name__}: {exc}"[:300])
    for source, expr in split.checks:
        try:
            ok = bool(eval(compile(expr, "<assert>", "eval", optimize=0), namespace))  # noqa: S307
        except CandidateRaised as exc:
            return Verdict(False, f"{source[:200]}: the solution raised {exc}")
        except Exception as exc:  # noqa: BLE001 - any error in a test is that test failing
            return Verdict(False, f"{source[:200]}: {type(exc).__name__}: {exc}"[:300])
        if not ok:
            return Verdict(False, f"failed: {source[:200]}")
    return Verdict(True)
