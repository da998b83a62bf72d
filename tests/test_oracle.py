"""The MBPP oracle's parent half, without a sandbox: how asserts are split, what data is accepted, the verdict."""

from __future__ import annotations

import json

import pytest

from promptintern.evaluate.oracle import (
    MAX_DEPTH,
    MAX_WIRE_BYTES,
    NotData,
    Raised,
    decode_values,
    judge,
    split_tests,
)


def _msg(*items) -> bytes:
    return json.dumps(list(items)).encode()


def test_only_the_candidates_calls_go_to_the_sandbox():
    split = split_tests(["assert set(similar((3, 4), (4, 5))) == set((4,))",
                         "assert round(f(x=2).real, 2) == 1.5 and g(h(1)) != [1]"], code="def similar(a, b): pass")
    assert split.calls == ("similar((3, 4), (4, 5))", "f(x=2).real", "g(h(1))")
    assert not split.fallback
    assert judge(split, [(4,), 1.499, [2]]).passed
    assert not judge(split, [(4, 5), 1.499, [2]]).passed


def test_a_builtin_name_the_candidate_defines_runs_in_the_sandbox():
    """MBPP task 126 names its function ``sum``: the candidate's, not the builtin, is what the test calls."""
    split = split_tests(["assert sum(10, 15) == 6"], code="def sum(a, b):\n    return 6\n")
    assert split.calls == ("sum(10, 15)",)
    assert judge(split, [6]).passed and not judge(split, [25]).passed
    assert split_tests(["assert int(lobb_num(5, 3)) == 35"], code="def lobb_num(n, m): pass").calls == ("lobb_num(5, 3)",)


def test_a_builtin_the_candidate_shadows_stays_the_parents_on_the_expected_side():
    """Else a wrong ``f`` plus ``def sorted(*a): return 0`` would make both sides agree."""
    code = "def sorted(*a):\n    return 0\ndef f(x):\n    return 0\n"
    split = split_tests(["assert f(1) == sorted([3, 1])"], code=code)
    assert split.calls == ("f(1)",)
    assert not judge(split, [0]).passed and judge(split, [[1, 3]]).passed


def test_a_name_the_test_imports_is_the_parents_even_if_the_candidate_binds_it():
    split = split_tests(["from itertools import chain\nassert f(1) == list(chain([1], [2]))"],
                        code="def chain(*a):\n    return 0\ndef f(x): pass")
    assert split.calls == ("f(1)",) and judge(split, [[1, 2]]).passed and not judge(split, [0]).passed


def test_a_module_the_test_names_is_the_parents_even_when_the_candidate_imports_it():
    """``sys.getsizeof`` (MBPP) must not be computed by the candidate, which could make both sides agree."""
    split = split_tests(["assert tuple_size((1, 2)) == sys.getsizeof((1, 2))"], code="import sys\ndef tuple_size(t): pass")
    assert split.calls == ("tuple_size((1, 2))",)
    import sys

    assert judge(split, [sys.getsizeof((1, 2))]).passed and not judge(split, [0]).passed


def test_setup_code_names_belong_to_the_sandbox_and_its_imports_to_both():
    setup = "import math\nroot = Node(1)\n"
    split = split_tests(["assert balanced(root) == math.isclose(1.0, 1.0)"], setup=setup, code="class Node: pass")
    assert split.calls == ("balanced(root)",)
    assert judge(split, [True]).passed and not judge(split, [False]).passed


def test_a_tests_own_imports_run_on_both_sides():
    split = split_tests(["import math\nassert area(math.pi) == math.floor(3.5)"], code="def area(r): pass")
    assert split.calls == ("area(math.pi)",) and split.sandbox_imports == "import math"
    assert judge(split, [3]).passed and not judge(split, [3.14]).passed


def test_an_exception_is_data_and_fails_only_the_assert_that_uses_it():
    split = split_tests(["assert f(1) == 2", "assert True or g(0)"])
    verdict = judge(split, [Raised("ZeroDivisionError"), 0])
    assert not verdict.passed and "ZeroDivisionError" in verdict.detail
    assert judge(split_tests(["assert True or g(0)"]), [Raised("ValueError")]).passed
    assert not judge(split_tests(["assert f(1) == 2"]), [NotData("a Liar is not data")]).passed


@pytest.mark.parametrize("tests", [
    ["x = f(1)\nassert x == 2"],
    ["assert all(f(i) == i for i in range(3))"],
    ["assert (lambda: f(1))() == 2"],
    ["assert f(1 == 2"],
])
def test_unsplittable_forms_fall_back_to_failed(tests):
    split = split_tests(tests)
    assert split.fallback and split.calls == ()
    assert not judge(split, []).passed and "fallback" in judge(split, []).detail


def test_asserts_hold_under_python_dash_o_semantics():
    """The parent evaluates each assert's test as an expression, so ``python -O`` cannot drop it."""
    split = split_tests(["assert f() == 1"])
    assert not judge(split, [0]).passed


def test_decode_round_trips_every_data_type():
    message = _msg(["N"], ["T"], ["i", hex(-3 ** 200)], ["f", float("nan").hex()], ["c", "0x1p+0", "-0x0p+0"],
                   ["s", "\udc80é"], ["b", "00ff"],
                   ["d", [[["t", [["i", "0x1"], ["s", "a"]]], ["Z", [["i", "0x2"]]]]]],
                   ["S", [["i", "0x1"]]], ["l", []], ["E", "KeyError"], ["!", "a generator is not data"])
    values = decode_values(message, 12)
    assert values[:3] == [None, True, -3 ** 200] and values[3] != values[3]
    assert values[4] == complex(1, -0.0) and values[5] == "\udc80é" and values[6] == b"\x00\xff"
    assert values[7] == {(1, "a"): frozenset({2})} and values[8] == {1} and values[9] == []
    assert values[10] == Raised("KeyError") and values[11] == NotData("a generator is not data")


@pytest.mark.parametrize("message, n", [
    (b"not json", 1),
    (_msg(["i", "0x1"]), 2),  # a value missing
    (_msg(["x", "1"]), 1),  # an unknown tag
    (_msg(["S", [["l", []]]]), 1),  # an unhashable set member
    (_msg(["i", "zz"]), 1),  # not hex
    (b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5), 1),
    (_msg(["l", []]) + b"x", 1),  # trailing bytes
    (b"[" + b" " * MAX_WIRE_BYTES + b"]", 0),
])
def test_decode_refuses_anything_that_is_not_exactly_n_values(message, n):
    with pytest.raises(ValueError):
        decode_values(message, n)


def test_decode_caps_nesting():
    deep = ["N"]
    for _ in range(MAX_DEPTH + 2):
        deep = ["l", [deep]]
    with pytest.raises(ValueError, match="nested"):
        decode_values(_msg(deep), 1)
