"""Config: validation errors name the key path, suggest the fix, and never escape as tracebacks."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepworks  # noqa: F401  (binds the model and optimizer registries)
from deepworks.config import Config, dump_config, load_config, parse_overrides
from deepworks.errors import ConfigError

MINIMAL = {"data": {"dataset": "digits"}, "model": {"name": "cnn"}}


def test_minimal_config_fills_every_default():
    cfg = load_config(MINIMAL)
    assert cfg.train.epochs >= 1 and cfg.train.optimizer.name == "adamw"
    assert cfg.model.params["filters"] == [32, 64]  # the model's own defaults are resolved
    assert cfg.train.optimizer.params["lr"] == pytest.approx(1e-3)
    assert cfg.data.val_fraction == 0.15 and cfg.data.test_fraction == 0.15


def test_dump_then_load_round_trips():
    cfg = load_config(MINIMAL, ["train.epochs=3", "model.filters=[8, 16]", "train.optimizer=sgd"])
    again = load_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.train.optimizer.params["momentum"] == 0.9


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config({**MINIMAL, "train": {"epocs": 3}})
    msg = str(e.value)
    assert "train.epocs" in msg and "'train.epochs'" in msg


def test_unknown_model_param_is_checked_against_the_model_schema():
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "filtres": [8]}})
    assert "model.filtres" in str(e.value) and "'model.filters'" in str(e.value)


def test_unknown_model_name_suggests_close_match():
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "resnet81"}})
    assert "model.name" in str(e.value) and "'resnet18'" in str(e.value)


def test_unknown_activation_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        load_config({"data": {"dataset": "digits"}, "model": {"name": "cnn", "activation": "rellu"}})
    assert "model.activation" in str(e.value) and "'relu'" in str(e.value)


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as e:
        load_config(MINIMAL, ["train.epochs=many"])
    assert "train.epochs" in str(e.value) and "many" in str(e.value)


def test_optimizer_params_validated_per_optimizer():
    with pytest.raises(ConfigError) as e:
        load_config(MINIMAL, ["train.optimizer=adamw", "train.optimizer.momentum=0.9"])
    assert "train.optimizer.momentum" in str(e.value)
    cfg = load_config(MINIMAL, ["train.optimizer=sgd", "train.optimizer.momentum=0.5"])
    assert cfg.train.optimizer.params["momentum"] == 0.5


def test_data_source_required():
    with pytest.raises(ConfigError) as e:
        load_config({"model": {"name": "cnn"}, "data": {}})
    assert "data.dataset" in str(e.value)


def test_monitor_must_be_a_known_metric():
    with pytest.raises(ConfigError) as e:
        load_config(MINIMAL, ["train.monitor=val_acc"])
    assert "val_accuracy" in str(e.value)


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {dataset: digits\nmodel: [")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert str(bad) in str(e.value) and "line" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "missing.yaml")
    assert "not found" in str(e.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError):
        load_config(MINIMAL, ["train..epochs=3"])
    with pytest.raises(ConfigError) as e:
        load_config(MINIMAL, ["train.epochs.x=3"])
    assert "train.epochs" in str(e.value)


def test_python_tags_are_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    evil.write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(evil)
    assert not marker.exists()


# ----------------------------------------------------------------- property-based

keys = st.sampled_from(
    ["data", "model", "train", "name", "seed", "dataset", "path", "epochs", "lr", "optimizer", "filters",
     "batch_size", "early_stopping", "monitor", "patience", "hidden", "x", "val_fraction", "padding"]
) | st.text(string.ascii_letters + "_", min_size=1, max_size=8)
scalars = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=True) | st.text(max_size=12)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=20
)
override_keys = st.lists(keys, min_size=1, max_size=3).map(".".join) | st.text(max_size=15)
overrides = st.lists(
    st.tuples(override_keys, st.text(max_size=15)).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, sets=overrides)
def test_random_documents_give_config_or_config_error(tmp_path_factory, doc, sets):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        cfg = load_config(path, sets)
    except ConfigError as exc:
        assert str(exc)  # a message, never an empty error
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_gives_config_or_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(sets=overrides)
def test_random_overrides_on_a_valid_config(sets):
    try:
        load_config(MINIMAL, sets)
    except ConfigError:
        pass


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
                         + sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert isinstance(load_config(path), Config)
