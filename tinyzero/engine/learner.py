"""The learner role: the policy (and, for PPO, a critic), AdamW, and the clipped-surrogate update.

A plain class (no Ray import): the job assembly wraps it with ``ray.remote`` where roles become actors.
Exact savings (the gradient is unchanged):
- the LM head runs on completion positions only (see ``forward.sequence_logprobs``);
- with one pass and one mini-batch the update is on-policy, so ``old_logprobs`` are the detached log-probs of
  the same forward pass (ratio exactly 1) instead of a second forward;
- with no KL loss and no entropy bonus, rows whose advantages are all zero (GRPO groups whose samples all got
  the same reward) contribute exactly zero gradient, so they are skipped; the loss normaliser still counts
  them, so the result is identical.
Micro-batches hold ``optim.micro_batch_size`` rows, or, with ``optim.max_tokens_per_micro_batch``, length-sorted rows
packed within that token budget (``_packed_micro_batches``); the loss weighting is exact either way.
With ``world_size`` > 1, several learner processes shard the policy (and critic) with FSDP2
(``tinyzero/engine/sharding.py``), each training on its own slice of the rows.
Precision: master weights, gradients and AdamW states are float32 always; ``compute_dtype`` (bfloat16 on GPU by
default) is used for the matmuls only, through autocast (and FSDP2's MixedPrecisionPolicy when sharded). A pure
bf16 AdamW at lr 1e-6 would leave almost every weight unchanged: the step is below half a bf16 ulp.
With ``model.lora`` (``lora`` here, rank > 0) the base is frozen in the compute dtype and only the float32
adapters train (``tinyzero/engine/lora.py``): the reference log-probs are the policy's with its adapters off
(``ref_logprobs``), the push sends the adapters (``adapter_push``; or, to a float32 engine, the merged weights of
the adapted layers: ``lora.push_mode``), and a checkpoint holds the adapters.
Simplifications: linear warm-up then constant learning rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from tinyzero import algos
from tinyzero.config import AlgoConfig, LoraConfig, OptimConfig
from tinyzero.engine import lora as lora_module
from tinyzero.engine.devices import release_cached_memory, resolve_device, resolve_dtype
from tinyzero.engine.forward import in_chunks, response_hidden, sequence_logprobs
from tinyzero.engine.messages import TokenBatch, TrainBatch
from tinyzero.engine.models import load_causal_lm
from tinyzero.engine.rollout import without_tied_head
from tinyzero.engine.sharding import to_local_float
from tinyzero.errors import NonFiniteUpdate, TinyZeroError


class Critic(nn.Module):
    """A value model: the policy's transformer body plus a scalar head, initialised from the policy weights."""

    def __init__(self, path: str | Path):
        super().__init__()
        lm = load_causal_lm(path, torch.float32, "cpu")  # fp32 master weights
        self.body = lm.base_model
        self.head = nn.Linear(lm.config.hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: TokenBatch) -> torch.Tensor:
        hidden = response_hidden(self.body, tokens, self.head.weight.device)  # [N, T, H]
        return self.head(hidden).squeeze(-1).float()  # [N, T]: V(state before token t)


class PolicyScorer(nn.Module):
    """The policy's log-probs (and entropy) for a TokenBatch, as one module call.

    Going through one ``forward`` matters under FSDP2: the root unit's hooks gather the embeddings, final norm
    and LM head only when the root module itself is called.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, tokens: TokenBatch, with_entropy: bool = False, entropy_grad: bool = False):
        return sequence_logprobs(self.lm, tokens, with_entropy=with_entropy, entropy_grad=entropy_grad)


class Learner:
    """Policy (+ critic for PPO) and their optimisers."""

    def __init__(
        self, model_path: str | Path, algo: AlgoConfig, optim: OptimConfig, *, compute_dtype: str = "auto",
        device: str = "auto", gradient_checkpointing: bool = False, seed: int = 0,
        rank: int = 0, world_size: int = 1, init_method: str | None = None, release_cache: bool = False,
        lora: LoraConfig | None = None, model_name: str = "",
    ):
        """With ``world_size`` > 1 this is one of several learner processes sharding the model with FSDP2
        (``init_method`` is the process group's rendezvous, e.g. ``tcp://host:port``). ``release_cache``: a
        sleeping vLLM shares this GPU and wakes after the update (``Layout.returns_cache``)."""
        torch.manual_seed(seed)
        self.algo, self.optim_cfg = algo, optim
        self.needs = algo.needs  # critic? several updates per batch? (algos.needs)
        self.policy_loss = algos.policy_loss(algo.policy_loss)
        self.rank, self.world_size = rank, world_size
        self.device = resolve_device(device)
        if world_size > 1:
            from tinyzero.engine import sharding

            self.device = sharding.init_distributed(rank, world_size, init_method or "tcp://127.0.0.1:29511")
        self.compute_dtype = resolve_dtype(compute_dtype, self.device)
        self.lora = lora if lora is not None and lora.rank > 0 else None
        self.peft = None  # the peft wrapper, with LoRA; self.policy is then the HF model inside it
        if self.lora is not None:
            self.base = lora_module.base_identity(model_name or str(model_path), model_path)
            # Frozen base in the compute dtype (never updated: no master copy needed); fp32 adapters.
            self.peft = lora_module.wrap(load_causal_lm(model_path, self.compute_dtype, self.device), self.lora)
            self.policy = self.peft.get_base_model()
        else:
            self.policy = load_causal_lm(model_path, torch.float32, self.device)  # fp32 masters, whatever computes
        self.ties_embeddings = bool(getattr(self.policy.config.get_text_config(), "tie_word_embeddings", False))
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
            if self.peft is not None:  # a frozen embedding output has no grad: checkpointed blocks need one
                self.policy.enable_input_require_grads()
        self.policy.config.use_cache = False
        self.scorer = PolicyScorer(self.policy)
        if world_size > 1:
            sharding.shard(self.scorer, self.policy.base_model.layers, self.compute_dtype)
        trained = [p for p in self.policy.parameters() if p.requires_grad]  # all, or the adapters with LoRA
        self.optimizer = torch.optim.AdamW(trained, lr=optim.lr, weight_decay=optim.weight_decay, foreach=True)
        self.critic = None
        self.critic_optimizer = None
        if self.needs.critic:
            self.critic = Critic(model_path).to(self.device)
            if world_size > 1:
                sharding.shard(self.critic, self.critic.body.layers, self.compute_dtype)
            self.critic_optimizer = torch.optim.AdamW(
                self.critic.parameters(), lr=optim.critic_lr, weight_decay=optim.weight_decay
            )
        self.release_cache = release_cache
        self.updates = 0  # optimizer steps taken (drives the warm-up schedule)
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # see update()
        self._collecting = False
        self._said_over_budget = False  # the note that a row exceeds the token budget, printed once
        self.rng = torch.Generator().manual_seed(seed)

    def _compute(self):
        """Autocast to the compute dtype around forward passes (off for float32); backward runs outside it."""
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    # ----------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def logprobs(self, tokens: TokenBatch) -> torch.Tensor:
        """Log-probs of the responses under the current policy, [N, T] (no gradient)."""
        self.policy.eval()
        with self._compute():
            return in_chunks(lambda part: self.scorer(part)[0], tokens, self.optim_cfg.micro_batch_size)

    @torch.no_grad()
    def ref_logprobs(self, tokens: TokenBatch) -> torch.Tensor:
        """LoRA: the reference log-probs, [N, T]: the policy with its adapters switched off is the base model."""
        assert self.peft is not None, "ref_logprobs() is the reference of a LoRA learner (model.lora.rank > 0)"
        with self.peft.disable_adapter():
            out = self.logprobs(tokens)
        if self.release_cache:
            release_cached_memory()
        return out

    @torch.no_grad()
    def values(self, tokens: TokenBatch) -> torch.Tensor:
        """Critic values, [N, T] (PPO only)."""
        assert self.critic is not None, "values() needs an estimator registered with critic=True (algo.name=ppo)"
        self.critic.eval()
        with self._compute():
            return in_chunks(self.critic, tokens, self.optim_cfg.micro_batch_size)

    # -------------------------------------------------------------------------------------- update
    def _lr_scale(self) -> float:
        warm = self.optim_cfg.warmup_steps
        return 1.0 if warm <= 0 else min(1.0, (self.updates + 1) / warm)

    def _units(self, batch: TrainBatch, rows: torch.Tensor) -> float:
        """The loss normaliser's share of ``rows``: tokens for token-mean, non-empty sequences otherwise."""
        mask = batch.tokens.response_mask[rows]
        if self.algo.loss_agg == "token-mean":
            return float(mask.sum())
        return float((mask.sum(dim=1) > 0).sum())

    @property
    def _can_trim(self) -> bool:
        """Cropping padding columns is exact except for Dr. GRPO's sum-norm, which divides by the width."""
        return self.algo.loss_agg != "seq-mean-token-sum-norm"

    def _can_skip_zero_rows(self, batch: TrainBatch) -> bool:
        no_kl_loss = self.algo.kl_coef == 0 or self.algo.kl_applied_as != "loss" or batch.ref_logprobs is None
        return no_kl_loss and self.algo.entropy_coef == 0 and self.critic is None

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """All optimizer steps for one rollout batch; returns averaged ``train/`` metrics."""
        self.policy.train()
        n = len(batch.tokens)
        totals: dict[str, float] = {}
        count = 0
        self._seen = []  # (learner, rollout) log-probs of the tokens of the first pass, for the mismatch
        for epoch in range(self.algo.epochs):
            self._collecting = epoch == 0
            order = torch.randperm(n, generator=self.rng) if self.needs.several_updates else torch.arange(n)
            for mini in order.chunk(self.algo.mini_batches):
                stats = self._mini_batch_step(batch, mini)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        if self.release_cache:
            release_cached_memory()
        return {key: value / count for key, value in totals.items()} | self._mismatch_stats()

    def _mismatch_stats(self) -> dict[str, float]:
        """The rollout/learner mismatch over every token the first pass saw (``rollout/`` names: it describes the
        engine's numerics, not the update). Rows skipped for zero advantage had no forward pass and are not in it."""
        if not self._seen:
            return {}
        learner, rollout = (torch.cat(parts) for parts in zip(*self._seen, strict=True))  # [K] each
        stats = algos.rollout_mismatch(learner, rollout, torch.ones_like(learner), self.algo.rollout_correction,
                                       self.algo.rollout_is_cap)
        return {("rollout/correction_frac" if key == "correction_frac" else f"rollout/mismatch_{key}"): float(value)
                for key, value in stats.items()}

    def _mini_batch_step(self, batch: TrainBatch, rows: torch.Tensor) -> dict[str, float]:
        units_all = max(self._units(batch, rows), 1.0)
        keep = rows
        if self._can_skip_zero_rows(batch):
            nonzero = (batch.advantages[rows] != 0).any(dim=1)
            keep = rows[nonzero]
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim_cfg.lr * self._lr_scale()
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("pg_loss", "clip_frac", "approx_kl", "entropy", "kl"), 0.0)  # + the loss's own stats
        weight_seen = 0.0
        if self._can_trim and len(keep):
            # Longest responses first: micro-batches then hold rows of similar length, so cropping each to
            # its longest row removes most padding. Prompts still repeat within a micro-batch (a step has few
            # distinct prompts), so the shared prompt pass keeps most of its saving.
            lengths = batch.tokens.response_mask[keep].sum(dim=1)
            keep = keep[torch.argsort(lengths, descending=True, stable=True)]
        for part, weight, scale in self._weighted_parts(batch, keep, units_all):
            stats = self._micro_step(part, weight * self.world_size, scale)  # FSDP averages gradients over processes
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value * weight
            weight_seen += weight
        grad_norm = self._clip_and_step(self.policy, self.optimizer, sums)
        out = {key: (value / weight_seen if weight_seen else 0.0) for key, value in sums.items()}
        if batch.ref_logprobs is None:
            del out["kl"]  # no reference model this run: a constant 0 would read as "no drift"
        out.update(grad_norm=grad_norm, lr=self.optim_cfg.lr * self._lr_scale(),
                   skipped_frac=1.0 - len(keep) / max(len(rows), 1))
        if self.critic is not None:
            out.update(self._critic_step(batch, rows))
        self.updates += 1
        return out

    def _weighted_parts(self, batch: TrainBatch, rows: torch.Tensor, units_all: float):
        """(micro-batch, its share of the loss normaliser, its loss scale) for this process's slice of ``rows``.

        Each micro-batch's loss is aggregated over its own rows, so multiplying it by its share of the mini-batch's
        normaliser (``_units``) gives exactly the mini-batch's loss, however the rows are grouped. The one
        aggregation that also depends on the width, Dr. GRPO's sum-norm (sum / padded width T), is trimmed only
        with a token budget, and then scaled by (its width / T) so it still divides by the mini-batch's T.
        An empty slot (this process ran out of rows) still yields one row with weight 0: every forward of a
        sharded model is a collective, so all processes must run the same number of micro-batches."""
        packed = self.optim_cfg.max_tokens_per_micro_batch > 0
        full_width = batch.tokens.response_mask.shape[1]
        sum_norm = self.algo.loss_agg == "seq-mean-token-sum-norm"
        for micro in self._my_micro_batches(batch, rows):
            part = batch.select(micro if len(micro) else rows[:1], trim=packed or self._can_trim, trim_prompt=packed)
            scale = part.tokens.response_mask.shape[1] / full_width if packed and sum_norm else 1.0
            yield part, (self._units(batch, micro) / units_all if len(micro) else 0.0), scale

    def _my_micro_batches(self, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """This process's micro-batches of ``rows``; the same count on every process (empty ones pad)."""
        if not len(rows):
            return []
        if self.optim_cfg.max_tokens_per_micro_batch > 0:
            return self._packed_micro_batches(batch, rows)
        size = self.optim_cfg.micro_batch_size
        per_process = -(-len(rows) // self.world_size)
        slots = -(-per_process // size)
        mine = list(rows[self.rank :: self.world_size].split(size)) if len(rows) > self.rank else []
        return mine + [rows[:0]] * (slots - len(mine))

    def _packed_micro_batches(self, batch: TrainBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """``optim.max_tokens_per_micro_batch``: ``rows`` sorted by length (prompt + response tokens used, longest
        first), dealt to the processes in turn, and each process's share cut into runs of consecutive rows whose
        padded size (rows x (longest prompt + longest response among them), what the trimmed micro-batch computes)
        stays within the budget; a row longer than the budget goes alone. Every process has all the rows,
        so each packs every share and pads its own to the largest count without a collective."""
        tokens = batch.tokens
        prompt = tokens.attention_mask[rows, : tokens.prompt_width].sum(dim=1)  # [R] prompt tokens used
        response = tokens.response_mask[rows].sum(dim=1).long().clamp_min(1)  # [R] a trimmed width is >= 1
        order = torch.argsort(prompt + response, descending=True, stable=True)
        rows, prompt, response = rows[order], prompt[order].tolist(), response[order].tolist()
        shares = [self._pack(rows[r :: self.world_size], prompt[r :: self.world_size], response[r :: self.world_size])
                  for r in range(self.world_size)]
        mine = shares[self.rank]
        return mine + [rows[:0]] * (max(len(share) for share in shares) - len(mine))

    def _pack(self, rows: torch.Tensor, prompt: list[int], response: list[int]) -> list[torch.Tensor]:
        budget = self.optim_cfg.max_tokens_per_micro_batch
        parts, start, top_p, top_r = [], 0, 0, 0
        for i, (p, r) in enumerate(zip(prompt, response, strict=True)):
            if i > start and (i - start + 1) * (max(top_p, p) + max(top_r, r)) > budget:
                parts.append(rows[start:i])
                start, top_p, top_r = i, 0, 0
            top_p, top_r = max(top_p, p), max(top_r, r)
            if p + r > budget and not self._said_over_budget and self.rank == 0:
                self._said_over_budget = True
                print(f"tinyzero: a row of {p + r} tokens is longer than optim.max_tokens_per_micro_batch={budget}, "
                      "so it runs alone in its micro-batch (raise the budget to keep every micro-batch within it)",
                      flush=True)
        if start < len(rows):
            parts.append(rows[start:])
        return parts

    def _micro_step(self, part: TrainBatch, weight: float, scale: float = 1.0) -> dict[str, float]:
        algo = self.algo
        mask = part.tokens.response_mask.to(self.device)
        with self._compute():
            logprobs, entropy = self.scorer(part.tokens, with_entropy=True, entropy_grad=algo.entropy_coef > 0)
        old = logprobs.detach() if part.old_logprobs is None else part.old_logprobs.to(self.device)
        adv = part.advantages.to(self.device)
        if part.rollout_logprobs is not None:
            adv = self._rollout_corrected(adv, old, part.rollout_logprobs.to(self.device), mask, weight)
        options = {key: getattr(algo, key) for key in self.policy_loss.options}
        loss, stats = self.policy_loss.fn(logprobs, old, adv, mask, agg=algo.loss_agg, **options)
        out = {"pg_loss": float(loss.detach()), **{key: float(value) for key, value in stats.items()},
               "entropy": float(algos.masked_mean(entropy.detach(), mask))}
        if part.ref_logprobs is not None:
            ref = part.ref_logprobs.to(self.device)
            kl = algos.kl_loss(logprobs, ref, mask, algo.kl_estimator, algo.loss_agg)
            out["kl"] = float(kl.detach())
            if algo.kl_coef > 0 and algo.kl_applied_as == "loss":
                loss = loss + algo.kl_coef * kl
        if algo.entropy_coef > 0:
            loss = loss - algo.entropy_coef * algos.entropy_bonus(entropy, mask, algo.loss_agg)
        (loss * (weight * scale)).backward()
        out["pg_loss"] *= scale  # sum-norm over a trimmed micro-batch: back to the mini-batch's width
        if "kl" in out:
            out["kl"] *= scale
        return out

    def _rollout_corrected(self, adv, old, rollout, mask, weight: float) -> torch.Tensor:
        """Advantages times the detached rollout-correction weight (``algo.rollout_correction``): the same as
        weighting each token's policy-gradient term, since the weight is non-negative. ``old`` is the learner at the
        weights that sampled the batch. Records the tokens for the mismatch metrics (not a padding slot's)."""
        if self._collecting and weight > 0:
            keep = mask != 0
            self._seen.append((old[keep].detach().cpu(), rollout[keep].cpu()))
        if self.algo.rollout_correction == "none":
            return adv
        return adv * algos.rollout_correction_weights(old, rollout, mask, self.algo.rollout_correction,
                                                      self.algo.rollout_is_cap)

    def _clip_and_step(self, module: nn.Module, optimizer: torch.optim.Optimizer, losses: dict[str, float]) -> float:
        """Clip the gradient and step, unless the loss terms (``losses``), the gradient norm or the learning rate is
        NaN or infinite: then the step is refused (NonFiniteUpdate) and the weights and AdamW moments stay as they
        were. Sharded learners decide together: the norm is global, and a bad loss on any process counts."""
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:  # every row was skipped: nothing to learn from this mini-batch
            return 0.0
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        norm = to_local_float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        values = {**losses, "gradient norm": norm, "learning rate": optimizer.param_groups[0]["lr"]}
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        if self._on_any_process(bool(bad)):
            optimizer.zero_grad(set_to_none=True)
            which = ", ".join(f"{name} {value}" for name, value in bad.items()) or "a loss on another learner process"
            raise NonFiniteUpdate(f"the learner refused update {self.updates + 1} because it was not finite ({which})",
                                  "lower optim.lr, or look for NaN or infinite rewards")
        optimizer.step()
        # Gradients are dead after the step: freed now, the learner holds only masters and AdamW's moments (12
        # bytes a parameter) until the next update, while a colocated vLLM wakes beside it.
        optimizer.zero_grad(set_to_none=True)
        return norm

    def _on_any_process(self, flag: bool) -> bool:
        """``flag`` or-ed over the learner processes (one scalar all-reduce when sharded)."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def _critic_step(self, batch: TrainBatch, rows: torch.Tensor) -> dict[str, float]:
        assert self.critic is not None and batch.returns is not None and batch.old_values is not None
        self.critic.train()
        self.critic_optimizer.zero_grad(set_to_none=True)
        units_all = max(self._units(batch, rows), 1.0)
        vf_loss_total, clip_total = 0.0, 0.0
        for part, weight, scale in self._weighted_parts(batch, rows, units_all):
            with self._compute():
                values = self.critic(part.tokens)
            mask = part.tokens.response_mask.to(values.device)
            loss, stats = algos.clipped_value_loss(
                values, part.old_values.to(values.device), part.returns.to(values.device), mask,
                self.algo.vf_clip, self.algo.loss_agg,
            )
            (loss * (weight * scale * self.world_size)).backward()
            vf_loss_total += float(loss.detach()) * scale * weight
            clip_total += float(stats["vf_clip_frac"]) * weight
        norm = self._clip_and_step(self.critic, self.critic_optimizer, {"value loss": vf_loss_total})
        return {"vf_loss": vf_loss_total, "vf_clip_frac": clip_total, "critic_grad_norm": norm}

    # ------------------------------------------------------------------------------ weights / state
    def named_weights(self, dtype: str | None = None) -> list[tuple[str, torch.Tensor]]:
        """The policy's weights for the rollout workers (CPU tensors, detached; gathered when sharded), cast to
        ``dtype`` (the engine's own, e.g. "bfloat16": half the bytes to move) when given; a tied head stays behind
        (``rollout.without_tied_head``). With LoRA (``model.lora.push=merged``): the merged weights of the adapted
        layers only, each copied to host memory as soon as it is computed, so the device holds one merged tensor at a
        time (all of them first: 5.5 GB more for Qwen2.5-3B, beside a waking vLLM), and its cache handed back."""
        if self.peft is not None:
            weights = [(name, _to_host(tensor)) for name, tensor in self.iter_weights(dtype)]
            if self.release_cache:
                release_cached_memory()
            return weights
        state = self._full_state(self.policy, getattr(torch, dtype) if dtype else None)
        return list(without_tied_head(state.items(), self.ties_embeddings))

    def iter_weights(self, dtype: str | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """The policy's weights one tensor at a time, on the learner's device, each cast to ``dtype`` only when it
        is reached: for an engine in this process (local mode), the push stays on the GPU and never holds more
        than one extra tensor."""
        if self.world_size > 1:
            raise RuntimeError("iter_weights is for an unsharded learner in the engine's process; use named_weights")
        target = getattr(torch, dtype) if dtype else None
        if self.peft is not None:
            yield from lora_module.merged_weights(self.policy, target)
            return
        for name, tensor in without_tied_head(self.policy.state_dict().items(), self.ties_embeddings):
            yield name, tensor.detach().to(target or tensor.dtype)

    def adapter_push(self, dtype: str | None = None):
        """LoRA: the adapters for the rollout engines (``AdapterPush``: peft's config and tensors), CPU copies cast to
        ``dtype``; the engines compute ``W·x + scale·B·(A·x)`` themselves, so nothing is rounded into ``W``."""
        assert self.peft is not None, "adapter_push() is for a LoRA learner (model.lora.rank > 0)"
        return lora_module.adapter_push(self.peft, getattr(torch, dtype) if dtype else None)

    def save(self, folder: str | Path) -> None:
        """HF-format policy (``policy/``) and critic body (``critic/`` + ``value_head.pt``), and ``learner.pt``
        (AdamW states of policy and critic, RNG states, update count).

        Sharded: every process gathers (collectives: weights and AdamW moments) and the first writes. The AdamW
        states are full tensors keyed by parameter name, so a checkpoint resumes with any number of processes."""
        folder = Path(folder)
        if self.peft is not None:
            self._save_adapters(folder)
            return
        weights = self._full_state(self.policy)
        critic = self._full_state(self.critic) if self.critic is not None else None
        optimizers = self._optimizer_states()
        if self.rank != 0:
            return
        bad = _first_non_finite({**weights, **(critic or {})}.items()) or _first_non_finite(_state_tensors(optimizers))
        if bad is not None:  # a backstop: the update guard keeps such values out of the weights in the first place
            raise TinyZeroError(f"the learner's {bad[:120]} holds NaN or infinite values, so this checkpoint was not "
                                "written: the previous one stays the latest; resume from it with a lower optim.lr")
        self.policy.save_pretrained(folder / "policy", state_dict=weights, safe_serialization=True)
        state = {"updates": self.updates, "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(),
                 **optimizers}
        if critic is not None:
            body = {k.removeprefix("body."): v for k, v in critic.items() if k.startswith("body.")}
            self.critic.body.save_pretrained(folder / "critic", state_dict=body, safe_serialization=True)
            torch.save({k: v for k, v in critic.items() if k.startswith("head.")}, folder / "critic" / "value_head.pt")
        torch.save(state, folder / "learner.pt")

    def _learner_state(self) -> dict:
        return {"updates": self.updates, "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state(),
                **self._optimizer_states()}

    def _save_adapters(self, folder: Path) -> None:
        """LoRA: ``adapter/`` (peft's adapter files and ``base.json``, the base's identity) and ``learner.pt``
        (the adapters' AdamW states, RNG states, update count); the frozen base is not saved again."""
        from peft import get_peft_model_state_dict

        adapters = host_copies(get_peft_model_state_dict(self.peft))
        state = self._learner_state()
        bad = _first_non_finite(adapters.items()) or _first_non_finite(_state_tensors(state))
        if bad is not None:  # a backstop, as for full weights
            raise TinyZeroError(f"the learner's {bad[:120]} holds NaN or infinite values, so this checkpoint was not "
                                "written: the previous one stays the latest; resume from it with a lower optim.lr")
        self.peft.save_pretrained(folder / lora_module.ADAPTER_DIR, state_dict=adapters)
        (folder / lora_module.ADAPTER_DIR / lora_module.BASE_FILE).write_text(json.dumps(self.base, indent=1) + "\n")
        torch.save(state, folder / "learner.pt")

    def _load_adapters(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict

        where = folder / lora_module.ADAPTER_DIR
        if not where.is_dir():
            raise TinyZeroError(f"{folder} holds no LoRA adapters ({lora_module.ADAPTER_DIR}/): it was written by a "
                                "run without model.lora; resume it with model.lora.rank=0")
        lora_module.check_base(lora_module.read_base(where), self.base, folder)
        weights = _finite(_read_safetensors(where), where)
        result = set_peft_model_state_dict(self.peft, weights)
        expected = {k for k in self.peft.state_dict() if "lora_" in k}
        if result.unexpected_keys or len(weights) != len(expected):
            raise TinyZeroError(f"the LoRA adapters in {where} do not match this run's model.lora ({len(weights)} "
                                f"tensors for {len(expected)} adapter tensors): resume with the run's own "
                                "model.lora settings (its config.yaml)")

    def _full_state(self, module: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Full weights on CPU; with ``dtype``, cast (unsharded: before leaving the device, half the copy for bf16)."""
        if self.world_size > 1:
            from tinyzero.engine import sharding

            return {k: v.to(dtype or v.dtype) for k, v in sharding.full_state_dict(module).items()}
        return host_copies(module.state_dict(), dtype)

    def _optimizers(self) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
        pairs = {"optimizer": (self.policy, self.optimizer)}
        if self.critic is not None:
            pairs["critic_optimizer"] = (self.critic, self.critic_optimizer)
        return pairs

    def _optimizer_states(self) -> dict[str, dict]:
        """Each optimizer's full state keyed by parameter name, on CPU (a collective when sharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return {key: get_optimizer_state_dict(module, optimizer, options=options)
                for key, (module, optimizer) in self._optimizers().items()}

    def _load_optimizer_states(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        for key, (module, optimizer) in self._optimizers().items():
            if key not in state:  # a sharded checkpoint written before optimizer states were saved
                if self.rank == 0:
                    print(f"tinyzero: this checkpoint holds no {key} state (an older sharded run): AdamW's "
                          "moments restart from zero", flush=True)
                continue
            saved = state[key]
            if self.world_size == 1 and any(isinstance(k, int) for k in saved["state"]):
                optimizer.load_state_dict(saved)  # written before states were keyed by name: positional
                continue
            # Every process passes the full state; each keeps its own shard of it.
            set_optimizer_state_dict(module, optimizer, saved, options=StateDictOptions(full_state_dict=True))

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.peft is not None:
            self._load_adapters(folder)
        elif (folder / lora_module.ADAPTER_DIR).is_dir() and not (folder / "policy").is_dir():
            raise TinyZeroError(f"{folder} holds LoRA adapters, not a full policy: resume it with the model.lora "
                                "settings it was trained with (its run's config.yaml)")
        else:
            self._load_weights(self.policy, _finite(_read_safetensors(folder / "policy"), folder / "policy"))
        if self.critic is not None:
            critic = {f"body.{k}": v for k, v in _read_safetensors(folder / "critic").items()}
            critic.update(read_tensors(folder / "critic" / "value_head.pt"))
            self._load_weights(self.critic, _finite(critic, folder / "critic"))
        state = _finite(read_tensors(folder / "learner.pt"), folder / "learner.pt")
        self.updates = state["updates"]
        self.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self._load_optimizer_states(state)

    def _load_weights(self, module: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        if self.world_size > 1:
            from tinyzero.engine import sharding

            sharding.load_full_state_dict(module, weights)
            return
        missing, unexpected = module.load_state_dict(weights, strict=False)
        config = getattr(module, "config", None)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            names = ", ".join([*sorted(set(missing) - tied), *sorted(unexpected)][:3])
            raise TinyZeroError(f"the checkpoint's weights do not match the model (missing {len(set(missing) - tied)}, "
                                f"unexpected {len(unexpected)}: {names[:160]}): resume it with the model it was "
                                "trained from (model.name in the run's config.yaml)")


def read_tensors(path: Path) -> dict:
    """A file written by ``torch.save`` of tensors, numbers, strings and containers of them, read without running
    any code from it (``weights_only=True``): a crafted pickle that would import or call something is refused, and
    a damaged file is one sentence naming it."""
    import pickle
    import re

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        wants = re.search(r"(\S+) was not an allowed global", str(err))
        if wants:
            raise TinyZeroError(f"{path} asks to run code when loaded ({wants.group(1)[:80]}), so it was not loaded: "
                                "use a checkpoint written by tinyzero, from a source you trust") from None
        reason = "not a file torch.save wrote"
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = f"{type(err).__name__}"
    raise TinyZeroError(f"{path} is damaged ({reason}), so it was not loaded: resume from an earlier checkpoint, or "
                        "restore the file from a copy")


def _state_tensors(tree, prefix: str = ""):
    """(dotted name, tensor) for every tensor in nested dicts and lists (optimizer states)."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _state_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _state_tensors(value, f"{prefix}.{i}")


def _first_non_finite(named) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in named:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _finite(tree, path: Path):
    """``tree`` (weights, or a learner state) read from ``path``, refused in one sentence if any value is not
    finite: NaN AdamW moments would turn every weight into NaN on the first step after a resume."""
    bad = _first_non_finite(_state_tensors(tree))
    if bad is not None:
        raise TinyZeroError(f"{path} holds NaN or infinite values ({bad[:120]}), so it was not loaded: resume from an "
                            "earlier checkpoint")
    return tree


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """One tensor in host memory (the merged LoRA push copies them one at a time)."""
    return tensor.detach().cpu()


def host_copies(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Each distinct tensor of ``state`` cast to ``dtype`` and copied to host memory once; names that are views of
    one tensor (a tied LM head and its embedding) share that copy. Copied name by name, a tied head became a
    second tensor that a checkpoint saves again (1.2 GB of fp32 for Qwen2.5-3B); shared, save_pretrained drops
    the alias as it does for the model's own tied weights."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, tensor in state.items():
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
                tensor.dtype, tensor.device)
        if view not in copies:
            copies[view] = tensor.detach().to(dtype or tensor.dtype).cpu()
        out[name] = copies[view]
    return out


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for part in sorted(folder.glob("*.safetensors")):
        try:
            weights.update(load_file(str(part)))
        except (SafetensorError, OSError) as err:
            raise TinyZeroError(f"{part} is damaged ({str(err)[:100]}), so it was not loaded: resume from an earlier "
                                "checkpoint, or restore the file from a copy") from None
    if not weights:
        raise TinyZeroError(f"{folder} holds no weights (*.safetensors): resume from an earlier checkpoint")
    return weights
