from dataclasses import dataclass, field

import pytest

from promptintern.configtools import apply_overrides, describe, from_dict, load_yaml
from promptintern.errors import ConfigError


@dataclass
class Inner:
    learning_rate: float = field(default=1e-3, metadata={"help": "step size"})
    mode: str = field(default="a", metadata={"help": "mode", "choices": ("a", "b")})


@dataclass
class Outer:
    name: str = field(default="x", metadata={"help": "a name"})
    steps: int | None = field(default=None, metadata={"help": "steps"})
    tags: list[str] = field(default_factory=list, metadata={"help": "tags"})
    inner: Inner = field(default_factory=Inner, metadata={"help": "nested"})


def test_round_trip_and_coercion():
    cfg = from_dict(Outer, {"name": "y", "steps": 3, "tags": ["a"], "inner": {"learning_rate": 1}})
    assert cfg == Outer("y", 3, ["a"], Inner(1.0, "a"))
    assert isinstance(cfg.inner.learning_rate, float)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"nmae": "y"}, "unknown key 'nmae'; did you mean 'name'?"),
        ({"inner": {"lerning_rate": 1}}, "config.inner: unknown key 'lerning_rate'; did you mean 'learning_rate'?"),
        ({"steps": "many"}, "config.steps"),
        ({"steps": True}, "expected int, got bool"),
        ({"tags": "a"}, "config.tags: expected a list"),
        ({"inner": {"mode": "c"}}, "config.inner.mode: 'c' is not one of a, b"),
        ({"inner": 3}, "config.inner: expected a mapping"),
    ],
)
def test_errors_are_one_line(data, fragment):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values():
    raw = apply_overrides({"inner": {"mode": "a"}}, ["inner.learning_rate=2e-4", "steps=5", "tags=[a, b]"])
    cfg = from_dict(Outer, raw)
    assert cfg.inner.learning_rate == 2e-4 and cfg.steps == 5 and cfg.tags == ["a", "b"]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["steps"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(str(lst))


def test_describe_lists_nested_fields_with_help():
    rows = {k: h for k, _, h in describe(Outer)}
    assert rows["inner.learning_rate"] == "step size" and rows["name"] == "a name"
