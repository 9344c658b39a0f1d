"""Config: recipes load, overrides apply, and mistakes name the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyzero.config import Config, describe, load_config, to_yaml
from tinyzero.errors import TinyZeroError

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    config = load_config(recipe)
    assert isinstance(config, Config)


def test_overrides_and_round_trip(tmp_path):
    config = load_config(None, ["algo.name=ppo", "rollout.temperature=0.7", "env.options={digits: 1}",
                                "optim.lr=3e-6", "run.steps=5"])
    assert (config.algo.name, config.rollout.temperature, config.env.options) == ("ppo", 0.7, {"digits": 1})
    assert config.optim.lr == 3e-6 and config.run.steps == 5
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["algo.nme=1"], "unknown key algo.nme"),
        (["algorithm.name=grpo"], "unknown key algorithm"),
        (["rollout.temperature=hot"], "rollout.temperature must be float"),
        (["run.steps=0"], "run.steps must be at least 1"),
        (["run.steps=2.5"], "run.steps must be int"),
        (["algo.name=dpo"], "algo.name must be one of grpo, rloo, ppo"),
        (["model.gradient_checkpointing=3"], "model.gradient_checkpointing must be bool"),
        (["rollout=3"], "rollout must be a mapping"),
        (["steps"], "not a.b.c=value"),
        (["algo.kl_applied_as=both"], "algo.kl_applied_as must be one of loss, reward, got 'both'"),
        (["algo.kl_in=reward"], "algo.kl_in was renamed: write algo.kl_applied_as"),
        (["algo.policy_loss=dpo"], "algo.policy_loss must be one of clip"),
        (["eval.k=-1"], "eval.k must be 0 or more"),
        (["placement.strategy=spread"], "placement.strategy must be one of colocate, split"),
    ],
)
def test_mistakes_name_the_key(overrides, fragment):
    with pytest.raises(TinyZeroError, match=fragment):
        load_config(None, overrides)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(TinyZeroError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(TinyZeroError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("rollout:\n  samples_per_promt: 4\n")
    with pytest.raises(TinyZeroError, match="unknown key rollout.samples_per_promt"):
        load_config(typo)


@pytest.mark.parametrize("content, fragment", [
    (b"just a sentence\n", "holds a str, not a mapping of sections"),
    (b"- run\n- model\n", "holds a list, not a mapping of sections"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "is not a text file"),
])
def test_a_recipe_that_is_not_a_mapping_is_one_sentence(tmp_path, content, fragment):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(TinyZeroError, match=fragment) as caught:
        load_config(path, ["run.steps=2"])  # an override on top must not turn it into a traceback
    assert "\n" not in str(caught.value)


def test_choices_live_on_the_fields_and_the_registry():
    import dataclasses
    import typing

    from tinyzero import algos
    from tinyzero.config import AlgoConfig

    hints = typing.get_type_hints(AlgoConfig)
    assert typing.get_args(hints["loss_agg"]) == algos.AGG_MODES  # one list, read from the field
    assert typing.get_args(hints["kl_estimator"]) == algos.KL_ESTIMATORS
    fields = {f.name: f for f in dataclasses.fields(AlgoConfig)}
    assert list(fields["name"].metadata["choices"]()) == list(algos.ADVANTAGE_ESTIMATORS)
    assert list(fields["policy_loss"].metadata["choices"]()) == list(algos.POLICY_LOSSES)
    for estimator in algos.ADVANTAGE_ESTIMATORS.values():  # every option an estimator reads is a real setting
        assert set(estimator.options) <= set(fields), estimator.name
    for loss in algos.POLICY_LOSSES.values():
        assert set(loss.options) <= set(fields), loss.name


def test_config_and_env_options_share_one_coercer():
    from tinyzero.envs import make_env

    # The same strings a command line gives are read the same way in both places.
    assert load_config(None, ["model.gradient_checkpointing=yes"]).model.gradient_checkpointing is True
    env = make_env("arithmetic", {"digits": "2"})
    assert env.options.digits == 2
    with pytest.raises(TinyZeroError, match="arithmetic.digits must be int, got 'two'"):
        make_env("arithmetic", {"digits": "two"})


def test_describe_documents_every_field():
    text = describe()
    for line in text.splitlines():
        if line.startswith("  "):
            assert "# " in line and not line.rstrip().endswith("#"), f"undocumented: {line}"
