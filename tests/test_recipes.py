"""Every shipped recipe loads, places, and fits the machine its header names — for GRPO, and for PPO with the
overrides its header gives. Model shapes come from the published Qwen2.5 configs (no hub needed)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from transformers import Qwen2Config

from tinyzero.config import load_config
from tinyzero.engine.placement import plan_layout
from tinyzero.errors import TinyZeroError
from tinyzero.sizing.preflight import ModelShape, check_gpu_memory
from tinyzero.step.dynamic_sampling import check_filter
from tinyzero.step.overlong import check_overlong

RECIPES = sorted(Path(__file__).parents[1].glob("recipes/*.yaml"))
QWEN = {"Qwen/Qwen2.5-0.5B": (896, 4864, 24, 14, 2), "Qwen/Qwen2.5-1.5B": (1536, 8960, 28, 12, 2),
        "Qwen/Qwen2.5-3B": (2048, 11008, 36, 16, 2)}
# PPO: (GPUs, GB each, extra overrides), as each recipe's header says.
PPO = {
    "countdown-3b": [(2, 141, ()), (4, 80, ("placement.num_gpus=4", "placement.rollout_gpus=2"))],
    "countdown-1.5b": [(1, 80, ("rollout.gpu_memory_utilization=0.2",))],
    "countdown-0.5b": [(1, 40, ())],
    "arithmetic-0.5b": [(1, 40, ())],
}


def machine(path: Path) -> tuple[int, float] | None:
    """The header's `# machine: N x M GB` (None for a CPU recipe)."""
    line = next(x for x in path.read_text().splitlines() if x.startswith("# machine:"))
    match = re.match(r"# machine: (\d+) x (\d+) GB", line)
    return (int(match[1]), float(match[2])) if match else None


def shape(name: str) -> ModelShape:
    h, inter, layers, heads, kv = QWEN[name]
    return ModelShape.from_config(Qwen2Config(vocab_size=151936, hidden_size=h, intermediate_size=inter,
                                              num_hidden_layers=layers, num_attention_heads=heads,
                                              num_key_value_heads=kv, tie_word_embeddings=True))


def test_the_promised_recipes_ship():
    names = {p.stem for p in RECIPES}
    assert {"countdown-3b", "countdown-1.5b", "countdown-0.5b", "arithmetic-0.5b", "demo-cpu"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_fits_its_machine(path):
    text = path.read_text()
    for line in text.splitlines():
        key = line.split("#")[0].strip()
        if key and not key.endswith(":") and not line.startswith(" " * 4):  # a value line must say why
            assert "#" in line, f"{path.name}: no why-comment on {line!r}"
    config = load_config(path)
    lora = config.model.lora.rank > 0
    ppo_header = "# PPO instead of GRPO: refused with LoRA" if lora else "# PPO instead of GRPO: append algo.name=ppo"
    for header in ("# machine:", "# launch:", "# first:", ppo_header):
        assert header in text, f"{path.name} lacks {header!r}"
    layout = plan_layout(config)
    if lora:  # the header's word: PPO stops before anything loads
        with pytest.raises(TinyZeroError, match="algo.name=grpo or algo.name=rloo"):
            plan_layout(load_config(path, ["algo.name=ppo"]))
        check_overlong(config)
        found = machine(path)
        if found is not None:
            check_gpu_memory(config, layout, shape(config.model.name), [found[1] * 1e9] * found[0])
        return
    assert load_config(path, ["algo.name=ppo"]).algo.name == "ppo"  # PPO is one override away
    # ... and the run starts with the overrides the header names (e.g. no dynamic sampling under PPO).
    header = next(x for x in text.splitlines() if x.startswith("# PPO instead of GRPO: append"))
    check_filter(load_config(path, re.findall(r"\b[a-z_]+\.[a-z_.]+=[\w.-]+", header)))
    check_overlong(config)
    found = machine(path)
    if found is None:
        assert config.placement.num_gpus == 0
        return
    gpus, gb = found
    assert config.placement.num_gpus == gpus and config.model.name in QWEN
    check_gpu_memory(config, layout, shape(config.model.name), [gb * 1e9] * gpus)
    for ppo_gpus, ppo_gb, extra in PPO[path.stem]:
        ppo = load_config(path, ["algo.name=ppo", *extra])
        assert ppo.placement.num_gpus == ppo_gpus and all(e.split("=")[0] in text for e in extra)
        check_gpu_memory(ppo, plan_layout(ppo), shape(ppo.model.name), [ppo_gb * 1e9] * ppo_gpus)


def test_the_readme_table_is_what_the_preflight_and_the_estimate_compute():
    """README's GPU rows: the preflight's peak per GPU on the named machine, and the cost estimate on its card at
    its price, as printed there (upper bounds: seconds, tenths of hours and cents rounded up)."""
    from tinyzero.sizing.cost import estimate_run, recomputed_head_params
    from tinyzero.sizing.preflight import gpu_needs

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.-]+)` \| (\d) × (\d+) GB \((.+?)\) \| .+? \| (.+?) GB \| ≤ (\d+) \| ≤ ([\d.]+) h, "
                      r"≤ \$([\d.]+) at \$([\d.]+)", readme, flags=re.M)
    assert {row[0] for row in rows} == {p.stem for p in RECIPES if machine(p)}
    for name, gpus, gb, card, peaks, step, hours, usd, price in rows:
        config = load_config(Path(__file__).parents[1] / "recipes" / f"{name}.yaml", [f"cost.usd_per_gpu_hour={price}"])
        model = shape(config.model.name)
        needs = gpu_needs(config, plan_layout(config), model, [float(gb) * 1e9] * int(gpus))
        assert peaks == ", ".join(f"{need.peak / 1e9:.1f}" for need in needs), name
        est = estimate_run(config, model.params, card, head_params=recomputed_head_params(config, model))
        bounds = (math.ceil(est.step_s), math.ceil(est.total_s / 360) / 10, math.ceil(est.usd * 100) / 100)
        assert (int(step), float(hours), float(usd)) == bounds, name


def test_the_readme_typical_and_overlap_table_is_what_the_estimate_computes():
    """README's countdown table: the bound, the assumed typical length, and run.off_policy_steps=1 where the layout
    allows it (refused elsewhere, as tinyzero/step/overlap.py refuses it), each on the main table's card and price."""
    from tinyzero.errors import TinyZeroError
    from tinyzero.sizing.cost import estimate_run, recomputed_head_params
    from tinyzero.step.overlap import check_overlap

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    length = int(re.search(r"\| at (\d+) tokens \(assumed\) \|", readme).group(1))
    machines = {name: (card, price) for name, card, price in re.findall(
        r"^\| `([\w.-]+)` \| \d × \d+ GB \((.+?)\) \| .+? ≤ \$[\d.]+ at \$([\d.]+)", readme, flags=re.M)}
    cell = r"([≤≈]) (\d+) s, [≤≈] ([\d.]+) h, [≤≈] \$([\d.]+)"
    rows = re.findall(rf"^\| `(countdown[\w.-]*)` \| {cell} \| {cell} \| (.+?) \| (.+?) \|$", readme, flags=re.M)
    assert {row[0] for row in rows} == {p.stem for p in RECIPES if p.stem.startswith("countdown")}
    for name, *found in rows:
        card, price = machines[name]
        path = Path(__file__).parents[1] / "recipes" / f"{name}.yaml"
        cells = [tuple(found[0:4]), tuple(found[4:8]), found[8], found[9]]
        for (overlap, tokens), stated in zip([(False, None), (False, length), (True, None), (True, length)], cells,
                                            strict=True):
            config = load_config(path, [f"cost.usd_per_gpu_hour={price}", f"run.off_policy_steps={int(overlap)}"])
            if overlap:
                try:
                    check_overlap(config)
                except TinyZeroError:
                    assert stated == "refused: one shared GPU", name
                    continue
                stated = re.fullmatch(cell, stated).groups()
            model = shape(config.model.name)
            est = estimate_run(config, model.params, card, head_params=recomputed_head_params(config, model),
                               response_tokens=tokens)
            mark = "≤" if tokens is None else "≈"
            figures = (mark, str(math.ceil(est.step_s)), str(math.ceil(est.total_s / 360) / 10),
                       f"{math.ceil(est.usd * 100) / 100:.2f}")
            assert tuple(stated) == figures, (name, overlap, tokens)


@pytest.mark.parametrize("path", [p for p in RECIPES if machine(p)], ids=lambda p: p.stem)
def test_the_header_peak_is_what_the_preflight_computes(path):
    """Each GPU recipe's `# peak (preflight):` line: every GPU's figure and the usable share of its card."""
    from tinyzero.sizing.preflight import HEADROOM, gpu_needs

    line = next(x for x in path.read_text().splitlines() if x.startswith("# peak (preflight):"))
    stated = [(int(g), gb) for g, gb in re.findall(r"GPU (\d) ([\d.]+) GB", line)]
    gpus, gb = machine(path)
    config = load_config(path)
    needs = gpu_needs(config, plan_layout(config), shape(config.model.name), [gb * 1e9] * gpus)
    assert stated == [(need.gpu, f"{need.peak / 1e9:.1f}") for need in needs]
    assert line.endswith(f"of {gb * HEADROOM:.1f} usable")


def test_every_gpu_recipe_recomputes_its_lm_head_chunks_and_the_cpu_demos_keep_theirs():
    """The rule (tinyzero/engine/lm_head.py) by recipe: a GPU recipe's micro-batch of Qwen2.5 log-softmax (151,936
    words) is over the 1 GiB budget, so its backward recomputes the chunks and the estimate counts that LM-head
    pass; the CPU demos' 32 x 64 tokens of SmolLM2's 49,152 words (0.40 GB) are kept, and it is not counted."""
    from tinyzero.sizing.cost import recomputed_head_params

    smollm = ModelShape.from_config(Qwen2Config(vocab_size=49_152, hidden_size=576, intermediate_size=1536,
                                                num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                                tie_word_embeddings=True))
    seen = set()
    for path in RECIPES:
        config = load_config(path)
        if machine(path):
            assert recomputed_head_params(config, shape(config.model.name)) == 151_936 * QWEN[config.model.name][0]
        else:
            assert config.model.name == "smollm2-135m"
            assert recomputed_head_params(config, smollm) == 0.0
        seen.add(bool(machine(path)))
    assert seen == {True, False}
