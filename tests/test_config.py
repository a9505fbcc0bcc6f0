"""Configuration parsing: typed values, and every malformed key named in its error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from automtl.config import (
    DEFAULT_STORAGE,
    ParamSpec,
    SearchConfig,
    load_config,
    parse_config,
)
from automtl.errors import AutoMTLError, ConfigError
from automtl.experiment import prepare
from automtl.space import SearchSpace
from tests.conftest import DELETE, TINY_DATA, set_key, tiny_raw


def validate(raw: dict[str, Any]) -> SearchSpace:
    """What ``run_search`` checks before its first trial: parse, prepare, build the space."""
    config = parse_config(raw, trust_code=True)
    experiment = prepare(config)
    return SearchSpace(config, experiment.data.task_names, experiment.backbone.n_blocks)


def test_tiny_config_is_valid(tmp_path: Path, raw_config: dict[str, Any]) -> None:
    config = parse_config(raw_config)
    assert isinstance(config, SearchConfig)
    assert (config.name, config.study_name, config.data, config.backbone) == ("tiny", "tiny", TINY_DATA, "mlp")
    assert config.backbone_options == {"hidden": [16, 8, 8]} and config.data_options == {}
    assert config.train["lr"] == ParamSpec("range", low=1e-3, high=1e-2, log=True)
    assert config.train["epochs"] == ParamSpec("fixed", value=2)
    assert config.train["optimizer"] == ParamSpec("fixed", value="adamw")  # default
    assert config.space.max_groups == 2 and set(config.space.balancers) == {"equal", "dwa", "uncertainty"}
    assert config.space.group_split_points is None and config.space.task_split_points is None
    assert (config.sampler, config.pruner, config.n_trials, config.seed) == ("random", "none", 2, 0)
    assert config.storage == f"sqlite:///{tmp_path / 'study.db'}" and config.device == "cpu"
    assert config.raw == raw_config
    assert validate(raw_config).n_blocks == 3


def test_defaults() -> None:
    config = parse_config({"data": "x"}, source="some/dir/my_search.yaml")
    assert config.name == config.study_name == "my_search"
    assert (config.backbone, config.sampler, config.pruner, config.storage) == ("mlp", "tpe", "auto", DEFAULT_STORAGE)
    assert config.space.balancers == {"equal": {}} and config.space.max_groups == 3
    assert config.train["batch_size"] == ParamSpec("fixed", value=128)
    assert config.timeout is None and config.device == "auto"


def test_param_forms() -> None:
    config = parse_config(
        {
            "name": "p",
            "data": "x",
            "train": {"batch_size": [32, 64], "lr": 0.01, "weight_decay": {"low": 0, "high": 1.0e-3}},
            "space": {"balancers": {"dwa": {"temperature": 2.0}, "uncertainty": None}, "group_split_points": [3, 1]},
        }
    )
    assert config.train["batch_size"] == ParamSpec("choice", choices=(32, 64))
    assert config.train["lr"] == ParamSpec("fixed", value=0.01)
    assert config.train["weight_decay"] == ParamSpec("range", low=0, high=1.0e-3)
    assert config.space.balancers == {"dwa": {"temperature": ParamSpec("fixed", value=2.0)}, "uncertainty": {}}
    assert config.space.group_split_points == (3, 1)
    assert ParamSpec("range", low=1, high=4).is_int and not ParamSpec("range", low=1, high=4.0).is_int


# (dotted key changed, its new value, the key the error must name)
MALFORMED = [
    ("bogus", 1, "bogus"),
    ("name", DELETE, "name"),
    ("name", 5, "name"),
    ("device", 0, "device"),
    # data
    ("data", DELETE, "data"),
    ("data", ["tiny"], "data"),
    ("data.opts", {}, "data.opts"),
    ("data.name", "", "data.name"),
    ("data.options", "small", "data.options"),
    ("data.name", "no_such_data_set", "data.name"),
    ("data.name", "tests.helpers:no_such_function", "data.name"),
    ("data.options", {"n_rows": 5}, "data.options"),
    # backbone
    ("backbone.layers", 3, "backbone.layers"),
    ("backbone.name", "resnet9000", "backbone.name"),
    ("backbone.options", {"hidden": []}, "backbone.options"),
    ("backbone.options", {"width": 3}, "backbone.options"),
    ("backbone.options", [16, 8], "backbone.options"),
    ("backbone", {"name": "tests.helpers:backbone_without_shape"}, "backbone.name"),
    ("backbone", {"name": "tests.helpers:not_a_backbone"}, "backbone.name"),
    ("backbone", {"name": "tests.helpers:tiny_backbone", "options": {"depth": 2}}, "backbone.options"),
    # tasks
    ("tasks", {"zzz": {"loss": "mse"}}, "tasks.zzz"),
    ("tasks", {"b": {"loss": "no_such_loss"}}, "tasks.b.loss"),
    ("tasks", {"b": {"metric": "no_such_metric"}}, "tasks.b.metric"),
    ("tasks", {"b": {"weight": 2}}, "tasks.b.weight"),
    ("tasks", {"b": {"loss": 3}}, "tasks.b.loss"),
    ("tasks", {"b": "mse"}, "tasks.b"),
    ("tasks", {"b": {"loss": "tests.helpers:loss_of_one_argument"}}, "tasks.b.loss"),
    ("tasks", {"b": {"loss": "tests.helpers:TINY_TASKS"}}, "tasks.b.loss"),
    ("tasks", {"b": {"metric": "tests.helpers:plain_metric"}}, "tasks.b.metric"),
    ("tasks", {"b": {"metric": "tests.helpers:METRIC_OF_TWO_ARGUMENTS"}}, "tasks.b.metric"),
    # space
    ("space.depth", 2, "space.depth"),
    ("space.max_groups", 0, "space.max_groups"),
    ("space.max_groups", 1.5, "space.max_groups"),
    ("space.max_groups", True, "space.max_groups"),
    ("space.max_groups", 5, "space.max_groups"),  # the tiny data set has 4 tasks
    ("space.group_split_points", [], "space.group_split_points"),
    ("space.group_split_points", [1, -1], "space.group_split_points[1]"),
    ("space.group_split_points", [1, 9], "space.group_split_points"),
    ("space.task_split_points", "all", "space.task_split_points"),
    ("space.task_split_points", [4], "space.task_split_points"),
    ("space.balancers", ["equal", "no_such_balancer"], "space.balancers.no_such_balancer"),
    ("space.balancers", [], "space.balancers"),
    ("space.balancers", {}, "space.balancers"),
    ("space.balancers", 3, "space.balancers"),
    ("space.balancers", [3], "space.balancers[0]"),
    ("space.balancers", {"dwa": [1, 2]}, "space.balancers.dwa"),
    ("space.balancers", {"dwa": {"tau": 2.0}}, "space.balancers.dwa.tau"),
    ("space.balancers", {"dwa": {"temperature": {"low": 5.0, "high": 1.0}}}, "space.balancers.dwa.temperature"),
    ("space.balancers", {"dwa": {"temperature": {"lo": 1.0, "high": 5.0}}}, "space.balancers.dwa.temperature.lo"),
    ("space.balancers", {"dwa": {"temperature": {"lo": 1.0, "hi": 5.0}}}, "space.balancers.dwa.temperature"),
    # train
    ("train.momentum", 0.9, "train.momentum"),
    ("train.lr", {"low": 1.0e-2, "high": 1.0e-3}, "train.lr"),
    ("train.lr", {"low": 0.0, "high": 1.0e-3, "log": True}, "train.lr.low"),
    ("train.lr", {"low": 1.0e-3}, "train.lr.high"),
    ("train.lr", {"low": 1.0e-3, "high": 1.0e-2, "step": 1}, "train.lr.step"),
    ("train.lr", {"low": "1e-4", "high": 1.0e-2}, "train.lr.low"),
    ("train.lr", {"low": 1.0e-4, "high": 1.0e-2, "log": "yes"}, "train.lr.log"),
    ("train.lr", [], "train.lr"),
    ("train.lr", -0.1, "train.lr"),
    ("train.lr", [0.1, -1.0], "train.lr"),
    ("train.epochs", 0, "train.epochs"),
    ("train.epochs", [1, 2], "train.epochs"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.batch_size", {"low": 8.0, "high": 64.0}, "train.batch_size"),
    ("train.batch_size", 32.5, "train.batch_size"),
    ("train.batch_size", [16, 32.5], "train.batch_size"),
    ("train.batch_size", 97, "train.batch_size"),  # 96 training rows
    ("train.batch_size", [32, 128], "train.batch_size"),
    ("train.batch_size", {"low": 16, "high": 200}, "train.batch_size"),
    ("train.lr", float("nan"), "train.lr"),
    ("train.lr", float("inf"), "train.lr"),
    ("train.lr", {"low": 1.0e-3, "high": float("inf")}, "train.lr.high"),
    ("train.lr", [0.01, True], "train.lr"),
    ("train.lr", [0.01, float("nan")], "train.lr"),
    ("train.weight_decay", float("nan"), "train.weight_decay"),
    ("train.weight_decay", -1.0e-4, "train.weight_decay"),
    ("train.weight_decay", [0.0, -1.0], "train.weight_decay"),
    ("train.weight_decay", "lots", "train.weight_decay"),
    ("train.optimizer", "rmsprop", "train.optimizer"),
    ("train.optimizer", ["adamw", "lbfgs"], "train.optimizer"),
    ("train.optimizer", {"low": 1, "high": 2}, "train.optimizer"),
    # search
    ("search.trials", 3, "search.trials"),
    ("search.sampler", "grid", "search.sampler"),
    ("search.pruner", "hyperband", "search.pruner"),
    ("search.objective", "median_score", "search.objective"),
    ("search.objective", {"weighted": {}}, "search.objective.weighted"),
    ("search.objective", {"weighted": {"a": -1}}, "search.objective.weighted.a"),
    ("search.objective", {"weighted": {"a": 0, "b": 0}}, "search.objective.weighted"),
    ("search.objective", {"weighted": {"a": "high"}}, "search.objective.weighted.a"),
    ("search.objective", {"weigted": {"a": 1}}, "search.objective.weigted"),
    ("search.cost", ["n_params", "watts"], "search.cost[1]"),
    ("search.cost", ["flops", "flops"], "search.cost"),
    ("search.cost", {"n_params": 1}, "search.cost"),
    ("search.constraints", {"max_params": 0}, "search.constraints.max_params"),
    ("search.constraints", {"max_params": "1M"}, "search.constraints.max_params"),
    ("search.constraints", {"max_memory": 5}, "search.constraints.max_memory"),
    ("search.constraints", [1], "search.constraints"),
    ("search.n_trials", 0, "search.n_trials"),
    ("search.timeout", -5, "search.timeout"),
    ("search.timeout", True, "search.timeout"),
    ("search.timeout", float("nan"), "search.timeout"),
    ("search.constraints", {"max_params": float("inf")}, "search.constraints.max_params"),
    ("search.objective", {"weighted": {"a": float("nan")}}, "search.objective.weighted.a"),
    ("search.storage", "", "search.storage"),
    ("search.study_name", " ", "search.study_name"),
    ("device", "gpu", "device"),
    ("device", "cuda:x", "device"),
    ("search.seed", -1, "search.seed"),
    ("search.storage", 5, "search.storage"),
    ("search.study_name", ["x"], "search.study_name"),
]


@pytest.mark.parametrize(("dotted", "value", "key"), MALFORMED, ids=[f"{d}={v!r}" for d, v, _ in MALFORMED])
def test_malformed_config_names_the_key(tmp_path: Path, dotted: str, value: Any, key: str) -> None:
    raw = set_key(tiny_raw(tmp_path), dotted, value)
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    assert exc.value.key == key
    assert f"config key '{key}'" in str(exc.value)
    assert isinstance(exc.value, AutoMTLError) and isinstance(exc.value, ValueError)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config([1, 2])  # type: ignore[arg-type]
    assert exc.value.key == "(top level)"


def test_fixed_weights_reach_the_fixed_balancer(tmp_path: Path) -> None:
    raw = set_key(tiny_raw(tmp_path), "space.balancers", {"fixed": {"weights": {"a": 2.0, "b": 0.5}}})
    space = validate(raw)
    assert space.balancers["fixed"]["weights"] == ParamSpec("fixed", value={"a": 2.0, "b": 0.5})


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = tmp_path / "from_file.yaml"
    path.write_text(f"data: {{name: '{TINY_DATA}'}}\ntrain:\n  lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}\n")
    config = load_config(path)
    assert config.name == "from_file" and config.source == str(path)
    assert config.train["lr"] == ParamSpec("range", low=1e-4, high=1e-2, log=True)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("", "(file)"),
        ("data: [unclosed\n", "(file)"),
        # YAML 1.1 reads 1e-4 (no dot) as a string: the error must say where
        ("data: x\ntrain:\n  lr: {low: 1e-4, high: 1.0e-2}\n", "train.lr.low"),
        ("- just\n- a list\n", "(top level)"),
    ],
)
def test_load_config_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == key


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")


def test_relative_data_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data: {name: csv, options: {path: data/t.csv}}\n")
    config = load_config(path)
    assert config.data_options["path"] == str((tmp_path / "sub" / "data" / "t.csv").resolve())
    assert config.raw["data"]["options"]["path"] == config.data_options["path"]


def test_objective_cost_and_constraints(tmp_path: Path) -> None:
    raw = tiny_raw(tmp_path)
    raw["search"].pop("objective", None)
    config = parse_config(raw)
    assert config.objective == "delta_m" and config.cost == () and config.constraints == {}  # the defaults
    raw["search"].update(
        objective={"weighted": {"a": 2, "b": 0}}, cost="latency_ms", constraints={"max_params": 5000, "max_latency_ms": 2.5}
    )
    config = parse_config(raw)
    assert config.objective == "weighted" and config.objective_weights == {"a": 2.0, "b": 0.0}
    assert config.cost == ("latency_ms",)
    assert config.constraints == {"max_params": 5000.0, "max_latency_ms": 2.5}


def _two_task_csv(tmp_path: Path) -> dict[str, Any]:
    """The tiny config on a 2-task, 40-row csv (28 training rows) without max_groups or batch_size."""
    rows = "".join(f"{i},{i % 3},{i % 2},{0.5 * i}\n" for i in range(40))
    (tmp_path / "t.csv").write_text("f,g,y,z\n" + rows)
    raw = tiny_raw(tmp_path)
    raw["data"] = {"name": "csv", "options": {"path": str(tmp_path / "t.csv"), "targets": {"y": {"type": "binary"}, "z": {"type": "regression"}}}}
    raw["space"].pop("max_groups")
    raw["train"].pop("batch_size")
    return raw


def test_max_groups_and_batch_size_errors_give_both_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"5 groups asked for, but data set 'tiny' has only 4 tasks"):
        validate(set_key(tiny_raw(tmp_path), "space.max_groups", 5))
    with pytest.raises(ConfigError, match=r"batches of 128 samples, but the training split .* has only 96 rows"):
        validate(set_key(tiny_raw(tmp_path), "train.batch_size", [32, 128]))
    assert validate(set_key(tiny_raw(tmp_path), "train.batch_size", 96)).n_blocks == 3  # the whole split is fine


def test_defaults_are_judged_only_when_they_matter(tmp_path: Path) -> None:
    raw = _two_task_csv(tmp_path)
    # the default max_groups (3) is above 2 tasks: capped by the space, not an error (it was not written)
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    assert exc.value.key == "train.batch_size" and "128 (the default)" in str(exc.value) and "only 28 rows" in str(exc.value)
    raw["train"]["batch_size"] = 8
    assert validate(raw).max_groups == 2
    with pytest.raises(ConfigError, match="space.max_groups"):
        validate(set_key(raw, "space.max_groups", 3))
    # loading what was trained before skips the training-only checks
    assert prepare(parse_config(raw), check_space=False).data.task_names == ["y", "z"]


def test_a_loss_declared_by_the_data_set_is_checked_under_its_own_key(tmp_path: Path) -> None:
    raw = _two_task_csv(tmp_path)
    raw["train"]["batch_size"] = 8
    raw["data"]["options"]["targets"]["z"]["loss"] = "tests.helpers:loss_of_one_argument"
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    assert exc.value.key == "data.options.targets.z.loss"
    raw["tasks"] = {"z": {"loss": "mse"}}  # an override replaces it
    assert validate(raw).tasks == ["y", "z"]


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        (
            "backbone",
            {"name": "tests.helpers:backbone_without_shape"},
            ["backbone function 'tests.helpers:backbone_without_shape(*, width=4)'", "fn(input_shape, **options) -> Backbone"],
        ),
        ("backbone", {"name": "tests.helpers:not_a_backbone"}, ["returned object, not a Backbone"]),
        (
            "backbone",
            {"name": "tests.helpers:tiny_backbone", "options": {"depth": 2}},
            ["unexpected keyword argument 'depth'", "'tests.helpers:tiny_backbone(input_shape, width=4, n_blocks=2)'"],
        ),
        (
            "tasks",
            {"b": {"loss": "tests.helpers:loss_of_one_argument"}},
            ["loss function 'tests.helpers:loss_of_one_argument(output)'", "does not fit the call fn(output, target)"],
        ),
        ("tasks", {"b": {"metric": "tests.helpers:plain_metric"}}, ["is a function, not an automtl.metrics.Metric"]),
        (
            "tasks",
            {"b": {"metric": "tests.helpers:METRIC_OF_TWO_ARGUMENTS"}},
            ["its fn(output, target) does not fit", "fn(output, target, task) -> float"],
        ),
    ],
)
def test_user_function_signature_errors_say_what_is_expected(
    tmp_path: Path, dotted: str, value: Any, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        validate(set_key(tiny_raw(tmp_path), dotted, value))
    for part in expected:
        assert part in str(exc.value), f"{part!r} not in {str(exc.value)!r}"


def test_a_user_loss_is_not_called_while_checking(tmp_path: Path, nan_loss_calls: dict[str, int]) -> None:
    validate(set_key(tiny_raw(tmp_path), "tasks", {"b": {"loss": "tests.helpers:nan_loss"}}))
    assert nan_loss_calls["calls"] == 0


# ----------------------------------------------------------------------------- import paths run code
def _csv_raw(tmp_path: Path) -> dict[str, Any]:
    """A valid config on a registered data set (a small CSV), so only the names under test are paths."""
    table = tmp_path / "t.csv"
    table.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)))
    raw = tiny_raw(tmp_path)
    raw["data"] = {"name": "csv", "options": {"path": str(table), "targets": {"y": {"type": "binary"}}}}
    raw["space"]["max_groups"] = 1  # one task
    raw["train"]["batch_size"] = 8  # 21 training rows
    return raw


def test_trust_is_carried_but_not_compared(raw_config: dict[str, Any], tmp_path: Path) -> None:
    untrusted, trusted = parse_config(raw_config), parse_config(raw_config, trust_code=True)
    assert not untrusted.trust_code and trusted.trust_code and untrusted == trusted
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw_config))
    assert load_config(path, trust_code=True).trust_code and not load_config(path).trust_code
    with pytest.raises(ConfigError, match="config key 'data.name': data set 'tests.helpers:tiny_data' is a 'module:function'"):
        prepare(untrusted)
    assert prepare(trusted).data.name == "tiny"


@pytest.mark.parametrize(
    ("dotted", "value", "key"),
    [
        ("backbone.name", "subprocess:run", "backbone.name"),
        ("tasks", {"y": {"metric": "os:system"}}, "tasks.y.metric"),
        ("tasks", {"y": {"loss": "os:system"}}, "tasks.y.loss"),
        ("space.balancers", ["equal", "subprocess:Popen"], "space.balancers.subprocess:Popen"),
        ("data.options.targets.y.loss", "os:system", "data.options.targets.y.loss"),
    ],
)
def test_an_untrusted_import_path_is_refused_naming_the_key(tmp_path: Path, dotted: str, value: Any, key: str) -> None:
    raw = set_key(_csv_raw(tmp_path), dotted, value)
    with pytest.raises(ConfigError) as exc:
        prepare(parse_config(raw))
    assert exc.value.key == key and "is a 'module:function' import path" in str(exc.value)
    assert "trust_code=True" in str(exc.value)
