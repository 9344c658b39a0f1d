"""The driver: one training step read top to bottom, held-out evaluation, checkpoints and resume.

    sample prompts (env, seeded) → rollout workers generate G completions per prompt
    → rewards score each completion → reference log-probs (only when a KL term is on)
    → advantages (GRPO group-normalised | PPO + GAE with a critic) → learner updates
    → push new weights to the rollout workers in place → log → every k steps: eval, checkpoint

Data order is a pure function of (seed, cursor): the training stream is re-created and fast-forwarded on
resume, so a resumed run sees exactly the problems an uninterrupted one would. Sampling is reseeded each
step from (seed, step) for the same reason.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from tinyzero import algos
from tinyzero.aha import Tracker
from tinyzero.batches import RolloutBatch, ScoredBatch, TrainBatch, build_tokens
from tinyzero.checkpoint import latest_checkpoint, read_state, save_checkpoint
from tinyzero.config import Config, load_config, to_yaml
from tinyzero.data import iter_train, sample_test
from tinyzero.envs import make_env
from tinyzero.errors import TinyZeroError
from tinyzero.evaluation import Sampling, encode_prompt, evaluate
from tinyzero.preflight import preflight
from tinyzero.rewards.result import RewardResult
from tinyzero.runlog import RunLog, Timer
from tinyzero.transcripts import LEGEND, same_problem_at_start, transcript_markdown

PARALLEL_SCORING_MIN = 512  # below this many completions, scoring in-process beats a process pool
SCORING_WORKERS = 4  # at most this many reward processes: rewards are cheap string parsing


class Trainer:
    def __init__(self, config: Config, *, resume: bool = False, stream=None, roles=None):
        self.config = config
        self.run_dir = Path(config.run.out_dir) / config.run.name
        from tinyzero.cost import CostMeter, billed_units, check_budget, usd_per_gpu_hour
        from tinyzero.roles import build_roles, check_gpus

        # The meter starts first: loading models is rented time too.
        self.meter = CostMeter(usd_per_gpu_hour(config), billed_units(config))
        check_budget(config)
        layout = check_gpus(config)  # before anything loads: a layout this machine cannot serve fails at once
        from tinyzero.models import model_config

        model_cfg = model_config(config.model.name)  # config.json only: the preflight needs no weights
        needs = preflight(config, layout, model_cfg)
        self._prepare_run_dir(resume)
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        _quiet_libraries()
        self.env = make_env(config.env.name, config.env.options)
        a = config.aha
        # Before any model loads: a malformed lexicon stops here with its dotted key.
        self.aha = Tracker(a.lexicon, self.env, margin=a.margin, patience=a.patience, max_chars=a.max_chars)
        from tinyzero.models import load_tokenizer, resolve_model

        self.model_path = resolve_model(config.model.name)
        self.tokenizer = load_tokenizer(self.model_path)
        self.eval_problems = sample_test(self.env, config.eval.size, config.run.seed)
        self._eval_keys = {self.env.key(p) for p in self.eval_problems}
        self.step = 0
        self.cursor = 0  # training problems drawn so far
        self.history: list[dict] = []  # eval results
        self.stopped = ""  # why the run ended early ("budget"), if it did
        self._iteration_s: list[float] = []  # wall seconds of each step with its eval and checkpoint
        self.log = RunLog(self.run_dir, config.run.steps, tensorboard=config.log.tensorboard,
                          samples=config.log.samples, stream=stream)
        cache = self.run_dir / "cache"
        if roles is None:
            self.log.say(f"layout: {layout.describe()}")
            for need in needs:
                self.log.say(f"GPU {need.gpu}: about {need.peak / 1e9:.0f} GB at peak ({need.describe()} GB)")
            if layout.num_gpus and not needs and not config.cluster.address:
                self.log.say("GPU memory not checked: nvidia-smi did not list this machine's GPUs")
            if not resume:
                self._say_estimate(model_cfg)
            roles = build_roles(config, self.model_path, cache, layout)
        self.roles = roles
        self._pool = None
        if resume:
            self._restore()
        else:
            resolved = to_yaml(config)
            (self.run_dir / "config.yaml").write_text(resolved)
            self.log.config(resolved)
        self._stream = iter_train(self.env, config.run.seed, self._eval_keys)
        for _ in range(self.cursor):  # fast-forward: same data order as an uninterrupted run
            next(self._stream)

    # --------------------------------------------------------------------------------- set-up
    def _say_estimate(self, model_cfg) -> None:
        from tinyzero.cost import estimate_run
        from tinyzero.preflight import ModelShape, gpu_inventory

        gpus = gpu_inventory() if self.config.placement.num_gpus else []
        card = gpus[0][0] if gpus else None
        est = estimate_run(self.config, ModelShape.from_config(model_cfg).params, card)
        cost = f", ${est.usd:.2f}" if est.usd is not None else " (set cost.usd_per_gpu_hour to see dollars)"
        self.log.say(f"estimate: about {est.step_s:.0f} s a step, {est.total_s / 3600:.1f} h for {self.config.run.steps} "
                     f"steps{cost} — {est.basis}; `tinyzero smoke` measures instead")

    def _prepare_run_dir(self, resume: bool) -> None:
        if resume:  # `train()` has checked the run folder holds a config
            return
        if latest_checkpoint(self.run_dir) is not None or (self.run_dir / "metrics.jsonl").exists():
            raise TinyZeroError(
                f"{self.run_dir} already holds a run: continue it with `tinyzero resume {self.run_dir}` "
                "or pick another run.name"
            )
        shutil.rmtree(self.run_dir, ignore_errors=True)  # a folder from a run that never finished a step
        self.run_dir.mkdir(parents=True)

    def _restore(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise TinyZeroError(f"{self.run_dir} has no complete checkpoint to resume from: start a new run")
        state = read_state(ckpt)
        self.step, self.cursor, self.history = state["step"], state["cursor"], state["history"]
        self.aha.load(state.get("aha", {}))  # baselines and the aha rule's series (absent: an older run)
        self.meter.spent_s += state.get("wall_s", 0.0)  # what the run's earlier sessions spent
        self.roles.learner.load(str(ckpt))
        self.roles.sync_weights()
        self._truncate_logs(self.step)
        self.log.say(f"resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    def _truncate_logs(self, step: int) -> None:
        """Drop what was logged after the checkpoint (metrics, completions), so a resumed run's logs read like an
        uninterrupted one's."""
        from tinyzero.runlog import truncate_jsonl

        for name in ("metrics.jsonl", "rollouts.jsonl.gz", "evals.jsonl.gz"):
            truncate_jsonl(self.run_dir / name, step)

    # -------------------------------------------------------------------------------- prompts
    def encode(self, problem: dict) -> tuple[str, list[int]]:
        return encode_prompt(self.tokenizer, self.env, problem, self.config.env.template)

    # ------------------------------------------------------------------------------------ steps
    def run(self) -> dict:
        c = self.config
        if self.step == 0 and not self.history:
            self.evaluate()
        try:
            while self.step < c.run.steps:
                start = time.monotonic()
                self.train_step()
                last = self.step == c.run.steps
                if (c.eval.every and self.step % c.eval.every == 0) or last:
                    if not (self.history and self.history[-1]["step"] == self.step):
                        self.evaluate()
                saved = (c.checkpoint.every and self.step % c.checkpoint.every == 0) or last
                if saved:
                    self.save()
                self._iteration_s.append(time.monotonic() - start)
                if not last and not self.meter.next_step_fits(c.run.budget_usd, self._next_step_s()):
                    self._stop_for_budget(saved)
                    break
        finally:
            self.log.flush()
        return self.summary()

    def _next_step_s(self) -> float:
        """Expected wall time of the next step: the slowest of the last few (evaluations and checkpoints in)."""
        return max(self._iteration_s[-5:])

    def _stop_for_budget(self, saved: bool) -> None:
        c, meter = self.config, self.meter
        if not saved:
            self.save()
        remaining = (c.run.steps - self.step) * sum(self._iteration_s[-5:]) / len(self._iteration_s[-5:])
        need = meter.usd + meter.usd_for(remaining)
        self.stopped = "budget"
        self.log.say(
            f"budget: ${meter.usd:.2f} of run.budget_usd={c.run.budget_usd:g} spent after step {self.step}, and one "
            f"more step (about ${meter.usd_for(self._next_step_s()):.2f}) would pass it; stopped with a checkpoint. "
            f"To finish the {c.run.steps} steps (about ${need:.2f} in all): tinyzero resume {self.run_dir} "
            f"run.budget_usd={need * 1.1:.2f}")

    def _sample_problems(self) -> list[dict]:
        problems = [next(self._stream) for _ in range(self.config.rollout.prompts_per_step)]
        self.cursor += len(problems)
        return problems

    def rollout(self, problems: list[dict]) -> RolloutBatch:
        r = self.config.rollout
        encoded = [self.encode(p) for p in problems]
        # A step's samples depend on (seed, step) only, so a resumed run repeats them: the engines' global
        # generators are reseeded (CPU), and each request carries its own seed where the platform takes one (GPU).
        self.roles.rollout.reseed(step_seed(self.config.run.seed, self.step))
        groups = self.roles.rollout.generate(
            [ids for _, ids in encoded], n=r.samples_per_prompt, max_new_tokens=r.max_new_tokens,
            temperature=r.temperature, top_p=r.top_p,
            seeds=request_seeds(self.config.run.seed, self.step, len(encoded), r.samples_per_prompt))
        rows = [(text, ids, p, c) for (text, ids), p, group in zip(encoded, problems, groups, strict=True)
                for c in group]
        return RolloutBatch(
            prompt_ids=[ids for _, ids, _, _ in rows], response_ids=[c.token_ids for *_, c in rows],
            texts=[c.text for *_, c in rows], finished=[c.finished for *_, c in rows],
            problems=[p for _, _, p, _ in rows], prompts=[t for t, *_ in rows], group_size=r.samples_per_prompt,
        )

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        results = self._score_texts(batch.texts, batch.problems)
        comps = sorted({k for res in results for k in res.components})
        return ScoredBatch(
            rollout=batch,
            scores=torch.tensor([res.score for res in results], dtype=torch.float32),
            correct=torch.tensor([res.correct for res in results], dtype=torch.bool),
            reasons=[res.reason for res in results],
            components={k: torch.tensor([res.components.get(k, 0.0) for res in results]) for k in comps},
        )

    def _score_texts(self, texts: list[str], problems: list[dict]) -> list[RewardResult]:
        if len(texts) < PARALLEL_SCORING_MIN:
            return score_many(self.env, texts, problems)
        if self._pool is None:
            self._pool = scoring_pool()
        return score_many(self.env, texts, problems, self._pool)

    def advantages(self, scored: ScoredBatch, tokens, timer: Timer) -> TrainBatch:
        a, roles = self.config.algo, self.roles
        mask = tokens.response_mask  # [N, T]
        ref = old = None
        if a.kl_coef > 0 and roles.reference is not None:
            with timer("reference"):
                ref = roles.reference.logprobs(tokens)  # [N, T]
        need_old = a.epochs * a.mini_batches > 1 or (ref is not None and a.kl_in == "reward")
        if need_old:
            with timer("old_logprobs"):
                old = roles.learner.logprobs(tokens)  # [N, T]
        kl_tokens = algos.kl_estimate(old, ref, a.kl_estimator) if (ref is not None and old is not None) else None
        penalty = a.kl_coef if (kl_tokens is not None and a.kl_in == "reward") else 0.0
        if a.name == "grpo":
            scores = scored.scores
            if penalty:
                scores = scores - penalty * algos.masked_sum(kl_tokens, mask, dim=1)  # [N]
            seq_adv = algos.grpo_advantages(scores, scored.rollout.group_size, a.normalize_std)  # [N]
            return TrainBatch(tokens, algos.broadcast_sequence_advantages(seq_adv, mask), old,
                              ref if a.kl_in == "loss" else None)
        values = roles.learner.values(tokens)  # [N, T]
        kl_for_reward = kl_tokens if kl_tokens is not None else torch.zeros_like(mask)
        token_rewards = algos.kl_penalised_rewards(scored.scores, kl_for_reward, mask, penalty)  # [N, T]
        adv, returns = algos.gae_advantages(token_rewards, values, mask, a.gamma, a.lam)
        adv = algos.masked_whiten(adv, mask)
        return TrainBatch(tokens, adv, old, ref if a.kl_in == "loss" else None, returns, values)

    def train_step(self) -> dict:
        c, timer = self.config, Timer()
        start = time.perf_counter()
        problems = self._sample_problems()
        with timer("rollout"):
            batch = self.rollout(problems)
            self.roles.rollout.sleep()  # colocated layouts: free vLLM's GPU memory for the update
        with timer("reward"):
            scored = self.score(batch)
        with timer("aha"):
            analyses = self.aha.analyse(batch.texts, batch.prompts, batch.problems)
            aha_values = self.aha.rollout_metrics(self.step + 1, analyses, scored.correct.tolist())
        width = c.rollout.max_new_tokens if c.algo.loss_agg == "seq-mean-token-sum-norm" else None
        tokens = build_tokens(batch.prompt_ids, batch.response_ids, self._pad_id(), width)
        train_batch = self.advantages(scored, tokens, timer)
        with timer("learner"):
            stats = self.roles.learner.update(train_batch)
        with timer("sync"):
            self.roles.sync_weights()
        self.step += 1
        seconds = time.perf_counter() - start
        values = self._step_metrics(scored, stats, timer, seconds)
        values.update(aha_values)
        rows = self._rows(scored)
        self.log.scalars(self.step, values)
        self.log.rollouts(self.step, rows)
        self.log.text("samples/train", self.step, rows[: c.log.samples])
        self._aha_transcripts(analyses, rows)
        self.log.progress(self.step, values, seconds, usd_per_s=self.meter.usd_for(1.0))
        return values

    def _aha_transcripts(self, analyses: list, rows: list[dict], kind: str = "rollout") -> None:
        """TensorBoard text: the first check ever seen (beside a step-0 transcript of its problem) and, every
        ``aha.transcripts_every`` steps, a few annotated completions (checks first, then reflections)."""
        a, step = self.config.aha, self.step
        verified = [i for i, x in enumerate(analyses) if x.verified]
        if verified and self.aha.first_verification.get(kind) is None and (kind == "rollout" or step > 0):
            self.aha.first_verification[kind] = step
            i = verified[0]
            blocks = [transcript_markdown(f"step {step}, first {kind} check", analyses[i], rows[i])]
            before = same_problem_at_start(self.run_dir, rows[i].get("problem"), rows[i].get("prompt"))
            if before is not None and before.get("step") != step:
                old = self.aha.analyse([before["completion"]], [before.get("prompt")], [before.get("problem")])[0]
                blocks.append(transcript_markdown(f"step {before.get('step', 0)}, same problem", old, before))
            self.log.markdown(f"aha/first_verification_{kind}", step, [LEGEND, *blocks])
        if kind == "rollout" and a.transcripts_every and step % a.transcripts_every == 0 and a.transcripts:
            order = sorted(range(len(analyses)), key=lambda j: (not analyses[j].verified, not analyses[j].reflections))
            blocks = [transcript_markdown(f"step {step}", analyses[j], rows[j]) for j in order[: a.transcripts]]
            self.log.markdown("aha/transcripts", step, [LEGEND, *blocks])

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def _rows(self, scored: ScoredBatch) -> list[dict]:
        b = scored.rollout
        return [
            {"prompt": b.prompts[i], "completion": b.texts[i], "score": float(scored.scores[i]),
             "correct": bool(scored.correct[i]), "reason": scored.reasons[i], "problem": b.problems[i]}
            for i in range(len(b.texts))
        ]

    def _step_metrics(self, scored: ScoredBatch, stats: dict, timer: Timer, seconds: float) -> dict:
        b = scored.rollout
        lengths = torch.tensor([len(r) for r in b.response_ids], dtype=torch.float32)
        values = {
            "reward/mean": float(scored.scores.mean()),
            "reward/std": float(scored.scores.std()) if len(scored.scores) > 1 else 0.0,
            "reward/accuracy": float(scored.correct.float().mean()),
            "reward/format_rate": float(scored.components["format"].mean()) if "format" in scored.components else 0.0,
            "rollout/response_length_mean": float(lengths.mean()),
            "rollout/response_length_max": float(lengths.max()),
            "rollout/clipped_frac": 1.0 - sum(b.finished) / len(b.finished),
            "rollout/tokens_per_s": float(lengths.sum()) / max(timer.seconds.get("rollout", 0.0), 1e-9),
            "time/step": seconds,
        }
        values.update({f"train/{k}": v for k, v in stats.items()})
        values.update({f"time/{k}": v for k, v in timer.seconds.items()})
        values["data/cursor"] = float(self.cursor)
        values.update(self.meter.metrics())
        return values

    # ------------------------------------------------------------------------------- eval, save
    def evaluate(self) -> dict:
        """Greedy decoding on the held-out problems (accuracy counts ``correct`` only); with ``eval.k``, also k
        samples per problem for pass@k and maj@k (tinyzero/evaluation.py)."""
        c = self.config
        encoded = [self.encode(p) for p in self.eval_problems]
        sampling = None
        if c.eval.k:
            sampling = Sampling((c.eval.k,), c.eval.k, c.rollout.temperature, c.rollout.top_p, c.run.seed)
        outcome = evaluate(self.roles.rollout, self.env, [ids for _, ids in encoded], self.eval_problems,
                           self._score_texts, max_new_tokens=c.eval.max_new_tokens, sampling=sampling)
        outs, results = outcome.greedy, outcome.greedy_results
        m, n = outcome.metrics, len(self.eval_problems)
        analyses = self.aha.analyse([o.text for o in outs], [t for t, _ in encoded], self.eval_problems)
        values = {"eval/accuracy": m["accuracy"], "eval/format_rate": m["format_rate"],
                  "eval/response_length": m["response_length"]}
        for key in (f"pass@{c.eval.k}", f"maj@{c.eval.k}"):
            if key in m:
                values[f"eval/{key}"] = m[key]
        values.update(self.aha.eval_metrics(analyses, [r.correct for r in results]))
        values["eval/seconds"] = m["seconds"]
        self.history.append({"step": self.step, **values, "n": n})
        if self.log.writer is not None:
            for key, value in values.items():
                self.log.writer.add_scalar(key, value, self.step)
        rows = [{"prompt": t, "completion": o.text, "score": r.score, "correct": r.correct, "reason": r.reason,
                 "problem": p} for (t, _), o, r, p in zip(encoded, outs, results, self.eval_problems, strict=True)]
        self.log.text("samples/eval", self.step, rows[: c.log.samples])
        self.log.evals(self.step, rows)
        self._aha_transcripts(analyses, rows, kind="eval")
        scaling = "".join(f", {key.removeprefix('eval/')} {values[key]:.1%}" for key in values
                          if key.startswith(("eval/pass@", "eval/maj@")))
        self.log.say(f"eval at step {self.step}: greedy accuracy {values['eval/accuracy']:.1%} on {n} held-out "
                     f"problems{scaling}, format {values['eval/format_rate']:.1%}, "
                     f"length {values['eval/response_length']:.0f}")
        return values

    def save(self) -> Path:
        state = {"step": self.step, "cursor": self.cursor, "history": self.history,
                 "config": dataclasses.asdict(self.config), "wall_s": self.meter.seconds, "aha": self.aha.state()}
        def write(folder: Path) -> None:
            self.roles.learner.save(str(folder))
            self.tokenizer.save_pretrained(folder / "policy")  # a checkpoint's policy/ loads on its own (HF, vLLM)

        path = save_checkpoint(self.run_dir, self.step, state, write, self.config.checkpoint.keep_last)
        return path

    def summary(self) -> dict:
        first, last = self.history[0], self.history[-1]
        return {"before": first["eval/accuracy"], "after": last["eval/accuracy"], "n": last["n"],
                "steps": self.step, "run_dir": str(self.run_dir), "stopped": self.stopped,
                "gpu_hours": self.meter.gpu_hours, "usd": self.meter.usd if self.meter.price else None}

    def close(self) -> None:
        self.log.close()
        if self._pool is not None:
            # After an error or Ctrl-C mid-scoring, drop the queued chunks rather than score them all first.
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self.roles.close()


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's sampling: a function of (run seed, step) only."""
    return seed * 1_000_003 + step


def request_seeds(seed: int, step: int, prompts: int, group: int) -> list[int]:
    """One seed per prompt; vLLM gives the prompt's i-th sample seed + i, so prompts are ``group`` apart and
    steps 2**24 apart: no two samples of a run share a random stream (below 2**24 samples a step)."""
    base = (step_seed(seed, step) << 24) % (1 << 62)
    return [base + i * group for i in range(prompts)]


def _quiet_libraries() -> None:
    """The kit prints one progress line per step; per-shard loading bars from transformers drown it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def scoring_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool for rewards whose workers are spawned, never forked.

    By the time a batch is big enough for the pool, the trainer holds Ray/gRPC and vLLM threads. fork copies
    the process with whatever locks those threads held at that instant, and a child can deadlock on one; a
    spawned worker starts a fresh interpreter and imports only what the pickled work needs: the env's module,
    not this one (which would pull in torch). A worker that dies (crash, OOM kill) breaks the pool: the
    pending `map` raises BrokenProcessPool instead of waiting forever.
    """
    workers = max_workers or max(1, min(SCORING_WORKERS, os.cpu_count() or 1))
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def score_many(
    env, texts: list[str], problems: list[dict], pool: ProcessPoolExecutor | None = None
) -> list[RewardResult]:
    """Score completions in order: in this process, or across `pool`'s workers; the results are the same.

    The env's bound `reward` method is what travels (pickled with the env, once per chunk of 64), so an
    out-of-tree environment only needs to be importable by its module name. Worker errors are re-raised here.
    """
    if len(texts) != len(problems):
        raise ValueError(f"{len(texts)} completions but {len(problems)} problems")
    if pool is None:
        return [env.reward(t, p) for t, p in zip(texts, problems, strict=True)]
    return list(pool.map(env.reward, texts, problems, chunksize=64))


def train(recipe: str | None, overrides: list[str], *, resume_dir: str | None = None, stream=None) -> dict:
    """Run (or resume) a training job; returns the summary."""
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not (run_dir / "config.yaml").is_file():
            raise TinyZeroError(f"no run to resume at {run_dir}: give a run folder such as runs/demo, "
                                "or start one with `tinyzero train RECIPE`")
        config = load_config(run_dir / "config.yaml", overrides)
        config = dataclasses.replace(
            config, run=dataclasses.replace(config.run, out_dir=str(run_dir.parent), name=run_dir.name))
        trainer = Trainer(config, resume=True, stream=stream)
    else:
        trainer = Trainer(load_config(recipe, overrides), stream=stream)
    try:
        return trainer.run()
    finally:
        trainer.close()
