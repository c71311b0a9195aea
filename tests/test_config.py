"""Config: validation errors name the key path, suggest the fix, and never escape as tracebacks."""

from __future__ import annotations

import copy
import re
import string
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import deepworks  # noqa: F401  (binds the model and optimizer registries)
from deepworks.config import Config, dump_config, load_config, parse_overrides
from deepworks.errors import ConfigError
from deepworks.models import MODELS
from deepworks.training import OPTIMIZERS

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


def test_on_and_off_unquoted_as_yaml_reads_them(tmp_path):
    # YAML turns an unquoted on/off into a boolean; compile and channels_last take it as meant
    cfg = load_config(MINIMAL, ["train.compile=off", "train.channels_last=on"])
    assert (cfg.train.compile, cfg.train.channels_last) == ("off", "on")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "train: {compile: on, channels_last: off}\n")
    assert (load_config(path).train.compile, load_config(path).train.channels_last) == ("on", "off")
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(MINIMAL, ["train.compile=maybe"])


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
# a value for one key: mostly scalars and near-names (documents alone are nearly always nested)
values = scalars | st.text(string.ascii_lowercase + "_", max_size=14) | st.lists(scalars, max_size=3) | documents
override_keys = st.lists(keys, min_size=1, max_size=3).map(".".join) | st.text(max_size=15)
overrides = st.lists(
    st.tuples(override_keys, st.text(max_size=15)).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20),
    max_size=3,
)


def schema_paths(schema, prefix=""):
    """Every key of ``schema`` as a dotted path; a mapping of sections (data.columns) under the key 'age';
    none inside list items (model.blocks)."""
    for name, field in schema.model_fields.items():
        yield prefix + name
        todo = [(field.annotation, f"{prefix}{name}.")]
        while todo:
            annotation, at = todo.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from schema_paths(annotation, at)
            elif typing.get_origin(annotation) is dict:
                todo.append((typing.get_args(annotation)[1], f"{at}age."))
            elif typing.get_origin(annotation) not in (list, tuple):  # no paths into list items
                todo += [(arg, at) for arg in typing.get_args(annotation)]


# every key of the config, with the params of MINIMAL's model (cnn) and optimizer (adamw)
ALL_PATHS = sorted({
    *schema_paths(Config),
    *schema_paths(MODELS.entry("cnn").params, "model."),
    *schema_paths(OPTIMIZERS.entry("adamw").params, "train.optimizer."),
})
# the gan section belongs to GAN models: its keys are fuzzed on a GAN config (below)
KEY_PATHS = [p for p in ALL_PATHS if not p.startswith("gan.")]
GAN_KEY_PATHS = [p for p in ALL_PATHS if p.startswith("gan.")]
MINIMAL_GAN = {"data": {"dataset": "digits"}, "model": {"name": "dcgan"}}


def names_key(message, path):
    """Does ``message`` name the key path ``path`` (alone, or as the start of a longer one)?"""
    return re.search(rf"(?<![\w.]){re.escape(path)}(?!\w)", message) is not None


def doc_paths(doc, prefix=""):
    """The dotted key path of every key and list item in ``doc``."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield f"{prefix}{key}"
        yield from doc_paths(value, f"{prefix}{key}.")


def assert_names_the_keys(message, doc, sets=()):
    """Each problem a validation error lists starts with a key path the user wrote: in ``doc``, in an
    override (or a key inside its value), or ``data``, the one required key; a bad override names it."""
    lines = message.splitlines()
    if lines[0].startswith("override "):
        assert any(f"override {item!r}" in lines[0] or f"override {item.partition('=')[0].strip()!r}" in lines[0]
                   for item in sets), message
        return
    if not lines[0].endswith("invalid config."):
        return  # about the whole file: not YAML, or not a mapping at the top level
    written = {"data", *doc_paths(doc)}
    for key, value in parse_overrides(sets):
        parts = key.split(".")
        written |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        written |= set(doc_paths(value, f"{key}."))
    problems = [re.match(r" *([^\s:]+): ", line) for line in lines[1:]]
    named = [m.group(1).replace("[", ".").replace("]", "") for m in problems if m]
    assert named, message
    for key in named:
        # a component given by name alone (model: cnn) reports its problems at model.name; a single
        # value where a list is expected (data.augment=hflip) is reported as its item 0 (data.augment[0])
        listed = re.sub(r"(\.\d+)+$", "", key)
        assert key in written or listed in written or (
            key.endswith(".name") and key.removesuffix(".name") in written), (key, message)


@settings(max_examples=500, deadline=None)
@given(path=st.sampled_from(KEY_PATHS), value=values, as_override=st.booleans())
@example(path="train.early_stopping.monitor", value="val_acc", as_override=False)  # was reported at `train`
@example(path="data.columns.age.kind", value="ordinal", as_override=False)  # these two at `data.columns.age`
@example(path="data.columns.age.order", value=[], as_override=True)
@example(path="model.name", value=[], as_override=False)  # an unhashable model name reached the family defaults
def test_a_bad_value_at_any_key_is_named_by_its_key_path(path, value, as_override):
    _bad_value_is_named(MINIMAL, path, value, as_override)


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(GAN_KEY_PATHS), value=values, as_override=st.booleans())
def test_a_bad_value_at_any_gan_key_is_named_by_its_key_path(path, value, as_override):
    _bad_value_is_named(MINIMAL_GAN, path, value, as_override)


def test_a_gan_section_on_a_classifier_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"gan\.n_critic: the gan section is for GAN models"):
        load_config({**MINIMAL, "gan": {"n_critic": 2}})


def _bad_value_is_named(base, path, value, as_override):
    if as_override:  # --set path=value, the value written as YAML
        args = (base, [f"{path}={yaml.safe_dump(value, default_flow_style=True, width=10**6)}"])
    else:  # in the document
        doc = copy.deepcopy(base)
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        args = (doc,)
    try:
        load_config(*args)
    except ConfigError as exc:
        assert names_key(str(exc), path), str(exc)


def test_keys_named_like_pydantic_union_tags_keep_their_path():
    # pydantic puts the failing member of a union ('int', 'str', "literal['auto']") in the error
    # location; only those are dropped, not the user's keys of the same name
    cases = {"none=1": "  none: unknown key.", "data.int=1": "  data.int: unknown key.",
             "data.columns={none: {kind: x}}": "  data.columns.none.kind: Input should be",
             "train.class_weights={str: x}": "  train.class_weights.str: Input should be a valid number"}
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(MINIMAL, [override])
        assert expected in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(MINIMAL, ["train.eval_batch_size=x"])  # an int | 'auto' union: two tags, one key
    assert str(e.value).count("  train.eval_batch_size: ") == 2 and "'int'" not in str(e.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, sets=overrides)
def test_random_documents_give_config_or_config_error(tmp_path_factory, doc, sets):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        cfg = load_config(path, sets)
    except ConfigError as exc:
        assert str(exc)  # a message, never an empty error
        assert_names_the_keys(str(exc), doc, sets)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_gives_config_or_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            assert "not valid YAML" in str(exc)
        else:
            assert_names_the_keys(str(exc), doc)


@settings(max_examples=200, deadline=None)
@given(sets=overrides)
def test_random_overrides_on_a_valid_config(sets):
    try:
        load_config(MINIMAL, sets)
    except ConfigError as exc:
        assert_names_the_keys(str(exc), MINIMAL, sets)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))
                         + sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert isinstance(load_config(path), Config)
