"""Typed configs from dicts and YAML; every bad field named."""

import pytest

from fpa_core.config import ConfigError, from_dict, load_yaml, merge, parse_overrides
from fpa_core.model_config import ModelConfig


def test_from_dict_builds_a_typed_config():
    cfg = from_dict(ModelConfig, {"d_hidden": 256, "rule": "oja", "input_generator": "v1"})
    assert cfg == ModelConfig(d_hidden=256, rule="oja", input_generator="v1")


def test_every_bad_field_is_named_at_once():
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, {"d_hiden": 256, "rule": "hebb", "output_tanh": "yes", "d_latent": 1.5,
                                "steps": 0})
    errors = e.value.errors
    assert len(errors) == 5
    assert any(m.startswith("d_hiden: unknown field; known fields are input_generator") for m in errors)
    assert "rule: 'hebb' is not allowed; choose one of 'delta', 'additive', 'oja', 'oja-softmax'" in errors
    assert "output_tanh: expected true or false, got 'yes' (str)" in errors
    assert "d_latent: expected an integer, got 1.5 (float)" in errors
    assert "steps: must be a positive integer, got 0" in errors
    assert str(e.value).startswith("invalid config (5 problems):")


def test_yaml_files(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("d_hidden: 64\nlatent_to_init: true\n")
    assert load_yaml(ModelConfig, path) == ModelConfig(d_hidden=64, latent_to_init=True)
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_yaml(ModelConfig, path)
    path.write_text("d_hidden: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(ModelConfig, path)
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(ModelConfig, tmp_path / "missing.yaml")


def test_overrides_parse_yaml_scalars_into_nested_dicts():
    got = parse_overrides(["model.d_hidden=2048", "model.rule=oja", "train.lr=1e-4", "model.output_tanh=false",
                           "name=run a"])
    assert got == {"model": {"d_hidden": 2048, "rule": "oja", "output_tanh": False}, "train": {"lr": "1e-4"},
                   "name": "run a"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["model.d_hidden"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["model..x=1"])


def test_float_fields_read_exponents_without_a_dot():
    from dataclasses import dataclass

    @dataclass
    class Opt:
        lr: float = 2e-4

    assert from_dict(Opt, parse_overrides(["lr=1e-4"])).lr == 1e-4
    with pytest.raises(ConfigError, match="lr: expected a number, got 'fast'"):
        from_dict(Opt, {"lr": "fast"})


def test_merge_is_deep_and_leaves_the_base_alone():
    base = {"model": {"d_hidden": 64, "rule": "delta"}, "seed": 0}
    merged = merge(base, {"model": {"rule": "oja"}, "seed": 3})
    assert merged == {"model": {"d_hidden": 64, "rule": "oja"}, "seed": 3}
    assert base["model"]["rule"] == "delta"
