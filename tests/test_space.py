"""The sweep files and their search spaces: the paper's ranges, define-by-run sampling, every bad entry named."""

import warnings

import optuna
import pytest
import yaml

from fpa_core.config import to_dict
from fpa_core.model import preset_config
from fpa_core.presets import PRESETS
from fpa_core.train.config import TrainConfig, build_config
from fpa_core.config import ConfigError, flatten, nested
from sweeps.sweep_file import load_sweep, sweep_names

optuna.logging.set_verbosity(optuna.logging.WARNING)

PAPER = ["celeba", "metfaces", "afhq-cat", "afhq-dog", "afhq-wild", "lsun-church"]
V2_ONLY = {"model.input_tanh", "model.d_in", "model.d_in_proj"}


def write_sweep(tmp_path, space, **top) -> str:
    """A sweep file on the digits config with ``space`` and any other top-level keys."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"dataset": "digits", "base": "digits", "space": space, **top}, sort_keys=False))
    return str(path)


def test_every_packaged_sweep_loads():
    assert sorted(PAPER) == sorted(PRESETS)  # a sweep per Table 3 column
    assert sweep_names() == sorted([*PAPER, "digits", "mnist"])
    for name in sweep_names():
        spec = load_sweep(name)
        assert spec.name == name and spec.dataset == name and spec.base == name
        spec.trial_config({})
    demo = load_sweep("digits", profile="demo")
    config = demo.trial_config(demo.first_params())
    assert (config.data.resolution, config.model.height, config.model.steps, config.steps) == (16, 16, 16, 2000)
    assert (config.fid.every, config.fid.dims, config.fid.backbone, config.optim.batch_size) == (250, 2048, "inception", 20)
    assert (demo.num_trials, demo.pruner, demo.warmup, demo.metric) == (8, "margin-halving", 0, "kid")
    assert demo.params == load_sweep("digits").params  # the demo shrinks the runs, not the space


def test_the_mnist_sweep_paints_32x32_at_full_rank_and_ablates_table_2s_axis():
    demo = load_sweep("mnist", profile="demo")
    config = demo.trial_config(demo.first_params())
    assert (config.data.dataset, config.data.resolution, config.model.channels, config.model.steps) == ("mnist", 32, 1, 32)
    assert (demo.num_trials, demo.pruner, demo.metric) == (8, "margin-halving", "kid")
    ablation = load_sweep("mnist", profile="ablation")
    assert [name for name, _ in ablation.cells()] == [
        "centre", "model.steps=16", "model.steps=8", "model.steps=4", "model.rule=additive"]
    assert ablation.num_trials == 15 and ablation.pruner == "none"
    additive = ablation.with_fixed({"model.rule": "additive"})  # --set model.rule=additive: the other half
    assert [name for name, _ in additive.cells()] == ["centre", "model.steps=16", "model.steps=8", "model.steps=4"]
    assert {p.name for p in load_sweep("mnist", stage="unet").params} == {"optim.lr", "unet.dim", "unet.blocks"}


@pytest.mark.parametrize("name", PAPER)
def test_the_paper_sweeps_have_appendix_b2s_ranges(name):
    spec = load_sweep(name)
    v2 = {"model.input_generator": ["v2"]}
    assert spec.to_dict()["space"] == {
        "model.input_generator": ["v1", "v2"],
        "model.input_tanh": {"values": [False, True], "if": v2},
        "model.latent_to_init": [False, True],
        "model.output_tanh": [False, True],
        "model.d_latent": [128, 256, 512],
        "model.d_hidden": [1024, 2048, 4096],
        "model.num_layers": [1, 2],
        "model.d_in": {"values": [8, 16, 32], "if": v2},
        "model.d_in_proj": {"values": [128, 256, 512], "if": v2},
    }
    assert spec.fixed == {"optim.batch_size": 20, "optim.lr": 2e-4, "model.steps": 64, "fid.every": 5000,
                          "steps": 300_000}
    assert spec.first == "table3"


@pytest.mark.parametrize("name,profile", [("metfaces", None), ("digits", "demo")])
def test_define_by_run_samples_only_the_active_parameters(name, profile):
    spec = load_sweep(name, profile)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    versions = set()
    for _ in range(40):
        trial = study.ask()
        params = spec.sample(trial)
        assert trial.params == params
        versions.add(params["model.input_generator"])
        if params["model.input_generator"] == "v1":
            assert not V2_ONLY & set(params)
        else:
            assert V2_ONLY <= set(params)
        model = spec.trial_config(params).model
        assert (model.d_hidden, model.input_generator) == (params["model.d_hidden"], params["model.input_generator"])
    assert versions == {"v1", "v2"}


def test_table3_is_the_first_trial():
    metfaces = load_sweep("metfaces").first_params()
    assert metfaces == {"model.input_generator": "v1", "model.latent_to_init": True, "model.output_tanh": True,
                        "model.d_latent": 512, "model.d_hidden": 4096, "model.num_layers": 2}
    celeba = load_sweep("celeba").first_params()
    assert (celeba["model.input_generator"], celeba["model.d_in"], celeba["model.d_in_proj"]) == ("v2", 8, 128)
    for name in PAPER:
        spec = load_sweep(name)
        assert spec.trial_config(spec.first_params()).model == preset_config(name)
    digits = load_sweep("digits")  # no Table 3 row: the first trial is the packaged digits config
    assert digits.first == "base" and digits.trial_config(digits.first_params()) == digits.trial_config({})


def test_tpe_multivariate_group_handles_the_conditional_space():
    spec = load_sweep("lsun-church")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True is experimental
        sampler = optuna.samplers.TPESampler(multivariate=True, group=True, n_startup_trials=5, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial(spec.first_params())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(15):
            trial = study.ask()
            params = spec.sample(trial)
            study.tell(trial, 100.0 - params["model.num_layers"] * 10 + i)
    assert study.trials[0].params == spec.first_params()
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("space,expected", [
    ({"model.d_hiden": [256, 512]}, "space.model.d_hiden: unknown parameter; did you mean model.d_hidden?"),
    ({"model.d_latent": []}, "space.model.d_latent: empty choice"),
    ({"model.rule": ["delta", "hebb"]},
     "space.model.rule: 'hebb' cannot be used: model.rule: 'hebb' is not allowed; choose one of"),
    ({"model.d_hidden": [0, 256]},
     "space.model.d_hidden: 0 cannot be used: model.d_hidden: must be a positive integer, got 0"),
    ({"optim.lr": {"low": -1.0e-4, "high": 1.0e-3}},
     "space.optim.lr: -0.0001 cannot be used: optim.lr: must be a positive, finite number"),
    ({"model.num_layers": {"low": 3, "high": 1}}, "space.model.num_layers: low (3) >= high (1)"),
    ({"model.d_in": {"values": [4, 8], "if": {"model.input_generator": "v2"}}},
     "space.model.d_in: if: model.input_generator is not in the space"),
    ({"model.d_in": {"values": [4, 8], "if": {"model.input_generator": "v2"}}, "model.input_generator": ["v1", "v2"]},
     "space.model.d_in: if: model.input_generator is not sampled before it; move model.input_generator above"),
    ({"model.input_generator": ["v1"], "model.d_in": {"values": [4], "if": {"model.input_generator": "v3"}}},
     "space.model.d_in: if: model.input_generator never takes ['v3']; it takes 'v1'"),
    ({"model.d_in": {"values": [4, 8], "when": "v2"}}, "space.model.d_in: unknown keys when"),
    ({"model.d_in": 8}, "space.model.d_in: expected a list of values"),
])
def test_a_bad_entry_is_named(tmp_path, space, expected):
    with pytest.raises(ConfigError) as e:
        load_sweep(write_sweep(tmp_path, space))
    assert len(e.value.errors) == 1 and e.value.errors[0].startswith(expected), e.value.errors


def test_every_bad_entry_is_named_at_once(tmp_path):
    space = {"model.d_hiden": [256], "model.d_latent": [], "model.rule": ["delta", "hebb"],
             "model.d_in": {"values": [4], "if": {"model.input_generator": "v2"}},
             "optim.lr": {"low": 1.0e-3, "high": 1.0e-4, "log": True}, "model.d_hidden": [64, 128]}
    with pytest.raises(ConfigError) as e:
        load_sweep(write_sweep(tmp_path, space, colour="blue", fixed={"optim.batch_sise": 8}))
    named = [message.split(":", 1)[0] for message in e.value.errors]
    assert named == ["colour", "fixed.optim.batch_sise", "space.model.d_hiden", "space.model.d_latent",
                     "space.model.d_in", "space.optim.lr", "space.model.rule"]
    assert str(e.value).startswith("invalid sweep bad (7 problems):")


def test_the_base_with_the_fixed_entries_must_build(tmp_path):
    with pytest.raises(ConfigError, match=r"base digits \+ dataset \+ fixed: data.resolution: 48 does not match"):
        load_sweep(write_sweep(tmp_path, {"model.d_hidden": [64]}, fixed={"data.resolution": 48}))


def test_the_first_trial_must_exist_and_lie_in_the_space(tmp_path):
    with pytest.raises(ConfigError, match="first: table3: dataset 'digits' has no Table 3 row"):
        load_sweep(write_sweep(tmp_path, {"model.d_hidden": [64]}, first="table3"))
    with pytest.raises(ConfigError, match=r"first: base gives model.d_hidden = 256, which the space does not include"):
        load_sweep(write_sweep(tmp_path, {"model.d_hidden": [64, 128]}, first="base"))


def test_unknown_sweeps_and_profiles_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"'cifar10': neither a packaged sweep \(afhq-cat, .*digits, .*mnist.*\) nor a YAML"):
        load_sweep("cifar10")
    with pytest.raises(ConfigError, match="profile 'tiny': unknown; this sweep has demo"):
        load_sweep("digits", profile="tiny")
    with pytest.raises(ConfigError, match="profile 'demo': unknown; this sweep has no profiles"):
        load_sweep("celeba", profile="demo")


def test_a_profile_merges_fixed_and_replaces_the_rest(tmp_path):
    path = write_sweep(tmp_path, {"model.d_hidden": [64, 128]}, fixed={"steps": 10, "log_every": 5},
                       profiles={"small": {"fixed": {"steps": 4}, "space": {"model.num_layers": [1, 2]}}})
    spec = load_sweep(path, profile="small")
    assert spec.fixed == {"steps": 4, "log_every": 5}
    assert [p.name for p in spec.params] == ["model.num_layers"]
    assert (spec.name, spec.profile) == ("bad", "small")


def test_to_dict_writes_a_sweep_file_that_loads_back(tmp_path):
    spec = load_sweep("afhq-cat")
    data = spec.to_dict()
    assert (data.pop("name"), data.pop("profile")) == ("afhq-cat", None)
    path = tmp_path / "afhq-cat.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_sweep(str(path)) == spec


def test_nested_and_flatten_are_inverses():
    dotted = flatten(to_dict(TrainConfig()))
    assert dotted["model.d_hidden"] == 1024 and dotted["discriminator.attn_res_layers"] == [32]
    assert build_config(nested(dotted)) == TrainConfig()
    assert flatten(TrainConfig()) == dotted
    assert nested({"model.d_hidden": 2, "steps": 5}) == {"model": {"d_hidden": 2}, "steps": 5}
    with pytest.raises(ConfigError, match="model is already set to a value"):
        nested({"model": 1, "model.d_hidden": 2})


def test_a_sweep_file_sets_the_launchers_defaults_and_names_bad_ones(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, {"model.d_hidden": [8, 16]}, num_trials=3, pruner="hyperband", warmup=0,
                                  metric="kid"))
    assert (spec.num_trials, spec.pruner, spec.warmup, spec.metric) == (3, "hyperband", 0, "kid")
    assert load_sweep(write_sweep(tmp_path, {"model.d_hidden": [8]})).pruner is None  # the launcher's default then
    with pytest.raises(ConfigError) as error:
        load_sweep(write_sweep(tmp_path, {"model.d_hidden": [8]}, pruner="asha", warmup=-1, metric="is"))
    message = str(error.value)
    assert "pruner: 'asha' is not one of median" in message and "warmup: expected an integer >= 0" in message
    assert "metric: 'is' is not one of fid, kid" in message
