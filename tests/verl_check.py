"""Runs inside verl's own venv (.venv-verl, `make verl-setup`): verl reads an export the way its trainer does.

Usage: verl_check.py EXPORT_DIR CASES_JSONL RESULT_JSON

1. Runs the export's run_verl.sh with PYTHON set to a stand-in that records the arguments the script hands to
   `python -m verl.trainer.main_ppo` (its own `import verl` / `import tinyzero.interop.verl_reward` checks run for real).
   A tiny local model folder is appended as the actor's and critic's model path (no hub here).
2. Composes them with Hydra against verl's own ppo_trainer config, as main_ppo's @hydra.main does, and runs
   verl.utils.config.validate_config (main_ppo's check) plus the dataclass conversions of the algorithm, rollout,
   reward and model sections (HFModelConfig loads the tokenizer and applies custom_chat_template).
3. Loads train and test parquet with verl's create_rl_dataset (RLHFDataset) and renders a few prompts with the
   tokenizer's chat template, as the rollout does.
4. Loads the reward the way verl's reward workers do (RewardLoopWorker -> load_reward_manager ->
   reward.custom_reward_function) and scores each case's completion against test row `index`, through a
   DataProto of token ids (decoded by the naive reward manager).
Writes everything to RESULT_JSON; the pytest side (tests/test_verl_interop.py) compares it with `tinyzero reward`.
GPU-only steps (workers, vLLM, FSDP, a training step) are not run: verl cannot train on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def launch_args(export_dir: Path, extra: list[str], work: Path) -> list[str]:
    """The overrides run_verl.sh passes to main_ppo (after `-m verl.trainer.main_ppo`)."""
    record = work / "args.bin"
    shim = work / "python"
    shim.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = "-m" ]; then printf "%s\\0" "$@" > "{record}"; exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    shim.chmod(0o755)
    env = {**os.environ, "PYTHON": str(shim)}
    subprocess.run(["bash", str(export_dir / "run_verl.sh"), *extra], check=True, env=env)
    argv = record.read_bytes().split(b"\0")[:-1]
    assert argv[:2] == [b"-m", b"verl.trainer.main_ppo"], argv[:2]
    return [a.decode() for a in argv[2:]]


def compose(overrides: list[str]):
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def tiny_model(work: Path) -> Path:
    from tiny_models import build_tiny_model  # tests/, this script's own folder

    return build_tiny_model(work / "tiny-model")


def main(export_dir: Path, cases_path: Path, result_path: Path) -> None:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import create_rl_dataset, need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    result: dict = {"ran": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_model(work)
        # Passed after the script's own arguments, as a user's overrides are; the critic's only matters for PPO.
        args = launch_args(export_dir, [f"actor_rollout_ref.model.path={model}", f"critic.model.path={model}"], work)
        result["args"] = args
        config = compose(args)
        result["ran"].append("hydra compose ppo_trainer")
        use_ref, use_critic = need_reference_policy(config), need_critic(config)
        validate_config(config=config, use_reference_policy=use_ref, use_critic=use_critic)
        result["ran"].append("verl.utils.config.validate_config")
        result["use_reference_policy"], result["use_critic"] = use_ref, use_critic
        for section in ("algorithm", "actor_rollout_ref.rollout"):  # verl converts these two itself
            node = OmegaConf.select(config, section)
            if "_target_" in node:
                omega_conf_to_dataclass(node)
                result["ran"].append(f"omega_conf_to_dataclass({section})")
        model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        result["ran"].append("omega_conf_to_dataclass(actor_rollout_ref.model) -> HFModelConfig")
        result["config"] = OmegaConf.to_container(config, resolve=False)

        tokenizer, processor = model_config.tokenizer, model_config.processor
        train = create_rl_dataset(config.data.train_files, config.data, tokenizer, processor, is_train=True)
        test = create_rl_dataset(config.data.val_files, config.data, tokenizer, processor, is_train=False)
        result["ran"].append("create_rl_dataset (train, val)")
        result["train_rows"], result["test_rows"] = len(train), len(test)
        result["rendered"] = [
            tokenizer.apply_chat_template(test[i]["raw_prompt"], add_generation_prompt=True, tokenize=False)
            for i in range(min(3, len(test)))
        ]
        cases = [json.loads(line) for line in cases_path.read_text().splitlines() if line.strip()]
        result["scores"] = score_cases(config, tokenizer, test, cases)
        result["ran"].append("RewardLoopWorker.compute_score_batch (naive reward manager, custom_reward_function)")
    result_path.write_text(json.dumps(result, default=str))


def score_cases(config, tokenizer, dataset, cases: list[dict]) -> list[dict]:
    """verl's reward worker on one DataProto holding each case's completion for test row ``index``."""
    import numpy as np
    import torch
    from verl import DataProto
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.utils.dataset.rl_dataset import collate_fn

    rows = [dataset[case["index"]] for case in cases]
    for case, row in zip(cases, rows, strict=True):
        assert row["extra_info"]["index"] == case["index"], (row["extra_info"], case["index"])
    batch = collate_fn(rows)
    ids = [tokenizer(case["completion"], add_special_tokens=False)["input_ids"] for case in cases]
    width = max(1, max(len(x) for x in ids))
    pad = tokenizer.pad_token_id
    responses = torch.tensor([x + [pad] * (width - len(x)) for x in ids], dtype=torch.long)
    prompts = torch.full((len(cases), 4), pad, dtype=torch.long)
    response_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], dtype=torch.long)
    tensors = {"prompts": prompts, "responses": responses,
               "attention_mask": torch.cat([torch.ones_like(prompts), response_mask], dim=1)}
    non_tensors = {k: v for k, v in batch.items() if isinstance(v, np.ndarray)}
    data = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    worker = RewardLoopWorker(config)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    return [{"reward_score": out["reward_score"], "reward_extra_info": out["reward_extra_info"]} for out in outputs]


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: verl_check.py EXPORT_DIR CASES_JSONL RESULT_JSON")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
