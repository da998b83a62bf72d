"""Stage datasets are pure functions of (task, instances, schedule, templates, neighbours)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptintern.errors import ConfigError
from promptintern.methods import METHOD_NAMES, plan
from promptintern.prompt import PromptFormat, Template
from promptintern.schedule import Schedule
from promptintern.stages import build_stages, load_stages, save_stages, stage_instances
from promptintern.tasks.base import Instance, Task

TEMPLATE = Template("Translate the request into one bash command.", "find: -name PAT -type f\ngrep: -r -i")


class ToyTask(Task):
    name = "toy"
    metric = "exact_match"
    template = TEMPLATE
    format = PromptFormat()

    def load_split(self, split, data_dir=None):
        return []


def toy_template_at(tau: float) -> Template:
    """A stand-in compressor: keep the first τ share of the words of each part."""
    def cut(text: str) -> str:
        words = text.split(" ")
        return " ".join(words[: round(len(words) * tau)])
    return Template(cut(TEMPLATE.instruction), cut(TEMPLATE.documentation))


def make_instances(n: int) -> list[Instance]:
    return [Instance(f"i{i}", f"list files number {i}", f"ls {i}") for i in range(n)]


def neighbours_of(instances, k):
    return {x.id: [y for y in instances if y.id != x.id][:k] for x in instances}


def user_turn(record) -> str:
    return record.messages[-1]["content"]


def test_prompt_shrinks_and_last_stage_is_query_only():
    inst = make_instances(12)
    sched = Schedule(stages=4, shape="linear", tau0=1.0, k=3)
    stages = build_stages(ToyTask(), inst, sched.points(), toy_template_at, neighbours_of(inst, 3))
    lengths = [sum(len(user_turn(r)) for r in s.records) for s in stages]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    for r, x in zip(stages[-1].records, inst, strict=True):
        assert user_turn(r) == f"Request: {x.query}"  # the query alone
        assert r.answer == x.answer
    first = user_turn(stages[0].records[0])
    assert TEMPLATE.instruction in first and first.count("Request:") == 4  # 3 examples + query


def test_instance_never_its_own_example():
    inst = make_instances(6)
    stages = build_stages(ToyTask(), inst, Schedule(stages=2, k=2).points(), toy_template_at, neighbours_of(inst, 2))
    for r in stages[0].records:
        query = next(x.query for x in inst if x.id == r.id)
        assert user_turn(r).count(query) == 1


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), stages=st.integers(1, 6), seed=st.integers(0, 5))
def test_slices_partition_the_data(n, stages, seed):
    inst = make_instances(n)
    slices = [stage_instances(inst, stages, i, "slice", seed) for i in range(stages)]
    ids = [x.id for s in slices for x in s]
    assert sorted(ids) == sorted(x.id for x in inst)
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert all(len(stage_instances(inst, stages, i, "revisit")) == n for i in range(stages))


def test_save_load_round_trip(tmp_path):
    inst = make_instances(5)
    stages = build_stages(ToyTask(), inst, Schedule(stages=3, k=2).points(), toy_template_at, neighbours_of(inst, 2))
    prints = save_stages(stages, tmp_path)
    assert set(prints) == {"stage-0", "stage-1", "stage-2"}
    again = load_stages(tmp_path, 3)
    assert [s.records for s in again] == [s.records for s in stages]
    assert save_stages(again, tmp_path / "b") == prints  # fingerprints are content hashes
    assert load_stages(tmp_path, 4) is None


def test_empty_training_set_is_a_config_error():
    with pytest.raises(ConfigError, match="training split is empty"):
        build_stages(ToyTask(), [], Schedule().points(), toy_template_at, {})


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_methods_train_and_serve_the_prompts_they_claim(method):
    sched = Schedule(stages=3, shape="linear", tau0=1.0, k=2)
    p = plan(method, sched, compressed_tau=0.3)
    expected_serve = {
        "promptintern": (0.0, 0), "full-prompt": (1.0, 2), "query-only": (0.0, 0), "compressed": (0.3, 2),
        "template-only": (0.0, 2), "examples-only": (1.0, 0), "base": (1.0, 2),
    }[method]
    assert (p.serve_tau, p.serve_k) == expected_serve
    if method == "base":
        assert not p.trains
        return
    last = p.points[-1]
    # every trained method ends on exactly the prompt it is served with
    assert (last.tau, last.k) == expected_serve
    inst = make_instances(5)
    stages = build_stages(ToyTask(), inst, p.points, toy_template_at, neighbours_of(inst, 2))
    final_turn = user_turn(stages[-1].records[0])
    assert (TEMPLATE.instruction in final_turn) == (expected_serve[0] == 1.0)
    assert final_turn.count("Request:") == 1 + expected_serve[1]


def test_unknown_method_suggests():
    with pytest.raises(ConfigError, match="did you mean 'promptintern'"):
        plan("promptinter", Schedule())
