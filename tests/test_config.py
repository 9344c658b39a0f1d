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
        (["eval.k=-1"], "eval.k must be between 0 and 1024"),
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


# Issue 18's hostile overrides: each was accepted unchecked, or raised a traceback, and now stops with one sentence
# naming the key and its range. Ranges live on the fields (tinyzero/config.py).
BAD_NUMBERS = [
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=-1", "optim.lr must be in (0, 1]"),
    ("optim.lr=0", "optim.lr must be in (0, 1]"),
    ("optim.lr=2", "optim.lr must be in (0, 1]"),
    ("optim.critic_lr=-.inf", "optim.critic_lr must be a finite number"),
    ("optim.lr=1e999", "optim.lr must be a finite number"),
    ("rollout.top_p=0", "rollout.top_p must be in (0, 1]"),
    ("rollout.top_p=5", "rollout.top_p must be in (0, 1]"),
    ("optim.grad_clip=nan", "optim.grad_clip must be a finite number"),
    ("algo.clip_low=nan", "algo.clip_low must be a finite number"),
    ("algo.clip_low=1.5", "algo.clip_low must be between 0 and 1"),
    ("algo.gamma=-0.1", "algo.gamma must be between 0 and 1"),
    ("algo.kl_coef=-1", "algo.kl_coef must be 0 or more"),
    ("rollout.kv_cache_gib=-1", "rollout.kv_cache_gib must be at least 1"),
    ("rollout.gpu_memory_utilization=1.5", "rollout.gpu_memory_utilization must be in (0, 1]"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be 0 or more"),
    ("log.samples=-1", "log.samples must be 0 or more"),
    ("eval.every=-1", "eval.every must be 0 or more"),
    ("checkpoint.every=-1", "checkpoint.every must be 0 or more"),
    ("checkpoint.keep_last=-3", "checkpoint.keep_last must be at least 1"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last must be at least 1"),
    ("run.steps=٣", "run.steps must be int"),  # Arabic-Indic three: int() reads it as 3
    ("rollout.temperature=١.٥", "rollout.temperature must be float"),
    ("optim.lr=1_0e-3", "optim.lr must be float"),
    ("rollout.temperature=nan", "rollout.temperature must be a finite number"),
    ("rollout.temperature=-1", "rollout.temperature must be 0 or more"),
    ("run.threads=-1", "run.threads must be between 0 and 4096"),
    ("run.seed=100000000000000000000000000000", "run.seed must fit in a 64-bit integer"),
    ("run.seed=4294967296", "run.seed must be between 0 and 2147483647"),
    ("run.seed=-1", "run.seed must be between 0 and 2147483647"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens must be at least 1"),
    ("eval.size=1000000000", "eval.size must be between 1 and 100000"),
    ("eval.k=1000000", "eval.k must be between 0 and 1024, got 1000000"),  # asked the allocator for 92 GB
    ("eval.k=1025", "eval.k must be between 0 and 1024"),
    ("run.budget_usd=inf", "run.budget_usd must be a finite number"),
    ("cost.usd_per_gpu_hour=-2", "cost.usd_per_gpu_hour must be 0 or more"),
    ("aha.margin=2", "aha.margin must be between 0 and 1"),
    ("placement.num_gpus=-1", "placement.num_gpus must be 0 or more"),
    ("env.options={format_score: .nan}", "arithmetic.format_score must be a finite number"),
]


@pytest.mark.parametrize("override, fragment", BAD_NUMBERS, ids=[o for o, _ in BAD_NUMBERS])
def test_bad_numbers_stop_with_the_key_and_its_range(override, fragment):
    from tinyzero.envs import make_env

    with pytest.raises(TinyZeroError) as err:
        config = load_config(None, [override])
        make_env(config.env.name, config.env.options)  # env options are checked when the env is made
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_every_numeric_field_has_a_range():
    """A new numeric field without a range on it fails here: say what values make sense."""
    import dataclasses
    import typing

    missing = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) and "min" not in f.metadata and "max" not in f.metadata:
                missing.append(f"{section.name}.{f.name}")
    assert missing == []


def test_an_error_quotes_only_a_short_prefix_of_the_value():
    long_text = "x" * 100_000
    for override in (f"optim.lr={long_text}", f"rollout.top_p=[{', '.join(['1'] * 10_000)}]",
                     f"run.steps={'9' * 5000}", f"rollout.temperature={'9' * 5000}"):
        with pytest.raises(TinyZeroError) as err:
            load_config(None, [override])
        assert len(str(err.value)) < 200, str(err.value)[:300]


BOMB = """\
env:
  name: arithmetic
  options:
    a: &a [x, x, x, x, x, x, x, x, x]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
rollout:
  temperature: [*h, *h]
"""


def test_a_yaml_alias_bomb_fails_fast_with_one_sentence(tmp_path):
    """Nine levels of nine aliases stand for 9**9 = 387 million values: expanding them (a gym task's list option
    hung; a typed field printed a 2 GiB error line after 50 s) is refused before it starts."""
    import time

    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(BOMB)
    start = time.monotonic()
    with pytest.raises(TinyZeroError) as err:
        load_config(recipe)
    assert time.monotonic() - start < 1.0
    message = str(err.value)
    assert message.startswith(f"recipe {recipe} uses a YAML alias (*a) at line 5") and len(message) < 300
    with pytest.raises(TinyZeroError, match="override env.options uses a YAML alias"):
        load_config(None, ["env.options={a: &a [1, 2], b: [*a, *a]}"])
    assert load_config(None, ["run.name=*star"]).run.name == "*star"  # not YAML that parses: kept as text


def test_eval_size_beyond_the_tasks_problems_fails_at_once_with_the_count():
    import time

    from tinyzero.data import sample_test
    from tinyzero.envs import make_env

    env = make_env("arithmetic", {"digits": 1, "ops": "+"})  # 10 x 10 operand pairs
    start = time.monotonic()
    with pytest.raises(TinyZeroError, match=r"arithmetic has only 100 distinct problems .* fewer than the 50,000"):
        sample_test(env, 50_000, 0)
    assert time.monotonic() - start < 1.0  # it drew 2.5 million problems before giving up
    assert len(sample_test(env, 100, 0)) == 100  # exactly as many as there are still works


@pytest.mark.parametrize(("listed", "layer"), [
    ("q_proj,lm_head", "lm_head"),
    (" embed_tokens ", "embed_tokens"),  # spaces kept: a quoted YAML value, as a recipe may hold it
    ("q_proj, model.embed_tokens", "model.embed_tokens"),  # peft matches the end of a module's path
])
def test_lora_on_the_lm_head_or_the_embedding_is_refused_at_load(tmp_path, listed, layer):
    """vLLM ties the LM head to the embedding and an adapted embedding is never pushed: the engine would sample from
    weights the learner does not have, so the recipe stops at load with the key, the layer and the fix."""
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(f"model:\n  lora:\n    rank: 8\n    target_modules: '{listed}'\n")
    with pytest.raises(TinyZeroError) as err:
        load_config(recipe)
    message = str(err.value)
    assert message.startswith("model.lora.target_modules must be all-linear or the blocks' layer names without "
                              f"{layer} (vLLM ties")
    assert "\n" not in message and ". " not in message  # one sentence
    for accepted in ("all-linear", "q_proj, v_proj", "o_proj,gate_proj"):
        assert load_config(None, [f"model.lora.target_modules={accepted}"]).model.lora.target_modules == accepted
