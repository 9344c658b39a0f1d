"""Preflight: parameter counts from configs, GPU memory estimates per layout, run folder, disk and host memory."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from tinyzero.config import load_config
from tinyzero.engine.placement import plan_layout
from tinyzero.errors import TinyZeroError
from tinyzero.sizing.preflight import (
    ModelShape,
    check_gpu_memory,
    check_host_memory,
    check_run_folder,
    checkpoint_bytes,
    gpu_needs,
)

GB = 1e9
QWEN = {"0.5b": (896, 4864, 24, 14, 2), "1.5b": (1536, 8960, 28, 12, 2), "3b": (2048, 11008, 36, 16, 2)}


def qwen(size: str) -> Qwen2Config:
    h, inter, layers, heads, kv = QWEN[size]
    return Qwen2Config(vocab_size=151936, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True)


@pytest.mark.parametrize("size,published", [("0.5b", 494_032_768), ("3b", 3_085_938_688)])
def test_parameter_count_from_config_is_exact(size, published):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen(size))
    assert sum(p.numel() for p in model.parameters()) == published == ModelShape.from_config(qwen(size)).params


def test_parameter_count_of_tied_and_untied_tiny_models(tiny_model_dir, tiny_tied_model_dir):
    for path in (tiny_model_dir, tiny_tied_model_dir):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert ModelShape.from_config(AutoConfig.from_pretrained(path)).params == sum(
            p.numel() for p in model.parameters())


def test_countdown_3b_fits_two_80gb_gpus_and_not_two_24gb_ones():
    config = load_config("recipes/countdown-3b.yaml")
    layout, shape = plan_layout(config), ModelShape.from_config(qwen("3b"))
    needs = check_gpu_memory(config, layout, shape, [80 * GB, 80 * GB])
    rollout_gpu, learner_gpu = needs
    assert "vLLM" in rollout_gpu.parts and "reference" in rollout_gpu.parts
    # docs/engine.md's table: ~63 GB beside vLLM, ~61 GB for the learner.
    assert 55 * GB < rollout_gpu.peak < 70 * GB and 55 * GB < learner_gpu.peak < 70 * GB
    assert learner_gpu.parts["learner states"] == pytest.approx(16 * shape.params)
    with pytest.raises(TinyZeroError) as err:
        check_gpu_memory(config, layout, shape, [24 * GB, 24 * GB])
    message = str(err.value)
    assert "GPU 0" in message and "24 GB" in message and "countdown-0.5b" in message
    assert len(message.splitlines()) == 1


def test_colocated_gpu_counts_vllm_awake_beside_the_learner_states():
    config = load_config(None, ["placement.num_gpus=1", "rollout.gpu_memory_utilization=0.9",
                                "model.gradient_checkpointing=true"])
    layout, shape = plan_layout(config), ModelShape.from_config(qwen("1.5b"))
    (need,) = gpu_needs(config, layout, shape, [80 * GB])
    assert need.parts["vLLM (awake)"] == pytest.approx(72 * GB)
    assert need.parts["learner states"] == pytest.approx(16 * shape.params)
    with pytest.raises(TinyZeroError, match="lower rollout.gpu_memory_utilization"):
        check_gpu_memory(config, layout, shape, [80 * GB])
    ok = load_config(None, ["placement.num_gpus=1", "rollout.gpu_memory_utilization=0.4",
                            "model.gradient_checkpointing=true"])
    check_gpu_memory(ok, plan_layout(ok), shape, [80 * GB])


def test_sharding_divides_the_learner_states():
    config = load_config(None, ["run.mode=ray", "placement.num_gpus=4", "placement.strategy=split",
                                "placement.rollout_gpus=2", "rollout.gpu_memory_utilization=0.7"])
    shape = ModelShape.from_config(qwen("3b"))
    needs = gpu_needs(config, plan_layout(config), shape, [80 * GB] * 4)
    assert needs[2].parts["learner states"] == pytest.approx(8 * shape.params)


def test_run_folder_must_be_writable_and_hold_the_checkpoints(tmp_path):
    shape = ModelShape.from_config(qwen("0.5b"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = load_config(None, [f"run.out_dir={blocker}/runs"])
    with pytest.raises(TinyZeroError, match="is not writable") as err:
        check_run_folder(config, shape)
    assert "run.out_dir" in str(err.value)
    config = load_config(None, [f"run.out_dir={tmp_path}/runs", "checkpoint.keep_last=2"])
    need = checkpoint_bytes(config, shape) * 3
    check_run_folder(config, shape, free_bytes=need + 1)
    with pytest.raises(TinyZeroError, match="checkpoint.keep_last"):
        check_run_folder(config, shape, free_bytes=need - 1)


def test_host_memory_for_the_weight_push():
    shape = ModelShape.from_config(qwen("3b"))
    config = load_config(None, ["run.mode=ray"])
    check_host_memory(config, plan_layout(config), shape, available_bytes=64 * GB)
    with pytest.raises(TinyZeroError, match="host memory"):
        check_host_memory(config, plan_layout(config), shape, available_bytes=8 * GB)


def test_gpu_inventory_reads_nvidia_smi_without_touching_cuda(tmp_path, monkeypatch):
    from tinyzero.sizing.preflight import gpu_inventory

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/bash\nprintf 'NVIDIA H100 80GB HBM3, 81559\\nNVIDIA A10G, 23028\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_inventory() == [("NVIDIA H100 80GB HBM3", 81559 * 2**20), ("NVIDIA A10G", 23028 * 2**20)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a Ray actor or a user who hid GPU 0
    assert gpu_inventory() == [("NVIDIA A10G", 23028 * 2**20)]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_inventory() == []  # no nvidia-smi: no GPUs to check


def test_the_estimate_uses_the_forward_pass_lm_head_chunk():
    from tinyzero.engine.forward import HEAD_CHUNK
    from tinyzero.sizing.preflight import LM_HEAD_CHUNK

    assert LM_HEAD_CHUNK == HEAD_CHUNK
