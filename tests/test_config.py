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


def test_describe_documents_every_field():
    text = describe()
    for line in text.splitlines():
        if line.startswith("  "):
            assert "# " in line and not line.rstrip().endswith("#"), f"undocumented: {line}"
