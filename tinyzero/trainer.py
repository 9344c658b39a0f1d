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

import copy
import dataclasses
import time
from pathlib import Path

import torch

from tinyzero import algos
from tinyzero.analysis.aha import Tracker
from tinyzero.analysis.evaluation import Sampling, encode_prompt, evaluate
from tinyzero.analysis.transcripts import pick_transcripts
from tinyzero.checkpoint import (
    ADAPTER_DIR,
    check_progress,
    latest_checkpoint,
    most_drawn_per_step,
    read_state,
    resume_point,
    save_checkpoint,
)
from tinyzero.config import Config, load_config, to_yaml
from tinyzero.console import quiet_libraries
from tinyzero.data import iter_train, sample_test
from tinyzero.engine.messages import RolloutBatch, ScoredBatch, TrainBatch, build_tokens, pad_logprobs
from tinyzero.envs import make_env
from tinyzero.errors import StopRun, TinyZeroError
from tinyzero.runlog import RunLog, Timer, claim_run_dir
from tinyzero.scoring import CONTROLS, Scorer
from tinyzero.sizing.preflight import preflight
from tinyzero.step import StepOptions
from tinyzero.step.dynamic_sampling import Collected
from tinyzero.step.overlap import Overlap, Pending, staleness
from tinyzero.trackers import open_wandb


class Trainer:
    def __init__(self, config: Config, *, resume: bool = False, stream=None, roles=None):
        self.config = config
        self.run_dir = Path(config.run.out_dir) / config.run.name
        from tinyzero.engine.roles import build_roles, check_gpus, lora_push
        from tinyzero.sizing.cost import (
            CostMeter,
            billed_units,
            check_budget,
            estimate_line,
            usd_per_gpu_hour,
        )

        # The meter starts first: loading models is rented time too.
        self.meter = CostMeter(usd_per_gpu_hour(config), billed_units(config))
        check_budget(config)
        self.options = StepOptions(config)  # what changes a step (tinyzero/step/): asked at each point of it
        self.options.check()
        layout = check_gpus(config)  # before anything loads: a layout this machine cannot serve fails at once
        lora_push(config)  # model.lora.push=merged onto a bf16 engine, or a rank vLLM cannot serve, stops here too
        from tinyzero.engine.models import model_config

        model_cfg = model_config(config.model.name)  # config.json only: the preflight needs no weights
        needs = preflight(config, layout, model_cfg)
        if not resume:  # `train()` has checked that a resumed folder holds a run
            claim_run_dir(self.run_dir)
        else:  # its checksums and state, and the state against the run, before any model loads
            self._resume_point = self._check_resume()
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        quiet_libraries()
        self.env = make_env(config.env.name, config.env.options)
        aha = config.aha
        # Before any model loads: a malformed lexicon stops here with its dotted key.
        self.aha = Tracker(aha.lexicon, self.env, margin=aha.margin, patience=aha.patience, max_chars=aha.max_chars)
        from tinyzero.engine.models import load_tokenizer, resolve_model

        self.model_path = resolve_model(config.model.name)
        self.tokenizer = load_tokenizer(self.model_path)
        self.eval_problems = sample_test(self.env, config.eval.size, config.run.seed)
        self._eval_keys = {self.env.key(p) for p in self.eval_problems}
        self.curriculum = self.options.curriculum  # data.curriculum (tinyzero/step/curriculum.py): what a step draws
        if self.curriculum.on:  # its levels and their streams, before a resume loads its state
            self.curriculum.attach(self.env, self._eval_keys, config.run.seed)
        self.step = 0
        self.cursor = 0  # training problems drawn so far
        self.history: list[dict] = []  # eval results
        self.stopped = ""  # why the run ended early ("budget"), if it did
        # run.off_policy_steps=1 (tinyzero/step/overlap.py): the batch generated ahead for the next step, the learner's
        # version (updates it took) and the engines' (those updates they have been pushed), and the thread the update
        # runs in. Counted from this process's start, not the run's: on resume the engines are pushed the
        # checkpoint's weights before any generation, so both start equal at 0 and only their difference is read.
        self._pending: Pending | None = None
        self._updates = 0
        self._engine_version = 0
        self._push_bytes = 0  # what the step's push moved to one engine (rollout/push_bytes)
        self._overlap = Overlap() if config.run.off_policy_steps else None
        self.log = RunLog(self.run_dir, config.run.steps, tensorboard=config.log.tensorboard,
                          samples=config.log.samples, stream=stream, mirror=open_wandb(config, self.run_dir))
        cache = self.run_dir / "cache"
        if roles is None:
            self.log.say(f"layout: {layout.describe()}")
            for need in needs:
                self.log.say(f"GPU {need.gpu}: about {need.peak / 1e9:.0f} GB at peak ({need.describe()} GB)")
            if layout.num_gpus and not needs and not config.cluster.address:
                self.log.say("GPU memory not checked: nvidia-smi did not list this machine's GPUs")
            if not resume:
                self.log.say(estimate_line(config, model_cfg))
            roles = build_roles(config, self.model_path, cache, layout)
        self.roles = roles
        self.scorer = Scorer(self.env)
        if config.reward.control != "none":
            self.log.say(f"control run (reward.control={config.reward.control}): the learner gets "
                         f"{CONTROLS[config.reward.control]}; accuracy and evaluations use the verifier")
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
    def _check_resume(self) -> tuple[Path, dict, bool]:
        """The latest checkpoint (``resume_point``), its step against the run log and its data cursor against the most
        a step can draw under this session's config, the config the run started with and the one that saved it (an
        earlier session may have drawn more a step)."""
        point = resume_point(self.run_dir)
        ckpt, state, _ = point
        saved = state.get("config")
        rollouts = [self.config.rollout, saved.get("rollout") if isinstance(saved, dict) else None]
        try:
            rollouts.append(load_config(self.run_dir / "config.yaml").rollout)
        except TinyZeroError:  # resume read it with its overrides; without them it is checked no further here
            pass
        check_progress(self.run_dir, ckpt, state, most_drawn_per_step(*rollouts))
        return point

    def _restore(self) -> None:
        ckpt, state, checked = self._resume_point
        if not checked:
            self.log.say(f"note: {ckpt} was written before checkpoints carried checksums: its files are not checked")
        if state["step"] and not (self.run_dir / "metrics.jsonl").exists():
            self.log.say(f"note: {self.run_dir} has no metrics.jsonl, so the step of {ckpt.name} is not checked against "
                         "the run log")
        self.step, self.cursor, self.history = state["step"], state["cursor"], state["history"]
        self.aha.load(state["aha"])  # baselines and the aha rule's series ({}: an older run)
        if self.curriculum.on:
            self.curriculum.load(state.get("curriculum"), ckpt)
        self.meter.spent_s += state["wall_s"]  # what the run's earlier sessions spent
        try:
            self.roles.learner.load(str(ckpt))
        except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, the user reads one sentence
            cause = getattr(err, "cause", None) or err  # under Ray, the learner's own exception
            if isinstance(cause, TinyZeroError):
                raise TinyZeroError(str(cause)) from None
            first = (str(cause).strip().splitlines() or [""])[0][:160]
            raise TinyZeroError(f"checkpoint {ckpt} does not load ({type(cause).__name__}: {first}): move it aside "
                                "(it stays on disk) to resume from the one before, or restore it from a copy") from None
        self.roles.sync_weights()  # the engines now hold the learner's weights: _updates == _engine_version == 0
        self.log.truncate_after(self.step)  # a resumed run's logs read like an uninterrupted one's
        self.log.say(f"resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    # -------------------------------------------------------------------------------- prompts
    def encode(self, problem: dict) -> tuple[str, list[int]]:
        return encode_prompt(self.tokenizer, self.env, problem, self.config.env.template)

    # ------------------------------------------------------------------------------------ steps
    def run(self) -> dict:
        config = self.config
        self._step_start = None  # (cursor, aha, curriculum state) while a step runs: what a stop mid-step rolls back to
        try:
            if self.step == 0 and not self.history:
                self.evaluate()
            while self.step < config.run.steps:
                start = time.monotonic()
                self._step_start = (self.cursor, copy.deepcopy(self.aha.state()), self._curriculum_state())
                if config.run.off_policy_steps:
                    self.overlapped_step()
                else:
                    self.train_step()
                self._step_start = None
                last = self.step == config.run.steps
                if (config.eval.every and self.step % config.eval.every == 0) or last:
                    if not (self.history and self.history[-1]["step"] == self.step):
                        self.evaluate()
                saved = (config.checkpoint.every and self.step % config.checkpoint.every == 0) or last
                if saved:
                    self.save()
                self.meter.record_iteration(time.monotonic() - start)
                if not last and not self.meter.can_afford_next_step(config.run.budget_usd):
                    if not saved:
                        self._drop_pending()
                        self.save()
                    self.stopped = "budget"
                    self.log.say(self.meter.budget_stop_message(config.run.budget_usd, self.step, config.run.steps,
                                                                self.run_dir))
                    break
        except StopRun as err:
            raise self._stop_with_checkpoint(getattr(err, "cause", None) or err) from None  # Ray: err.cause
        finally:
            self.log.flush()
        return self.summary()

    def _stop_with_checkpoint(self, err: StopRun) -> TinyZeroError:
        """The run cannot go on (an update refused as non-finite, a reward that cannot be computed): keep the last
        good state as a checkpoint, unless one of this step already exists, and say so in one sentence. A stop in
        the middle of a step rolls back what the step drew, so a resume draws it again."""
        failed = self.step + 1 if self._step_start is not None else self.step
        self._drop_pending()
        if self._step_start is not None:
            self.cursor, aha_state, curriculum = self._step_start
            self.aha.load(aha_state)
            if curriculum is not None:
                self.curriculum.rewind(curriculum)
        latest = latest_checkpoint(self.run_dir)
        path = latest if latest is not None and read_state(latest)["step"] == self.step else self.save()
        return TinyZeroError(f"step {failed}: {err.message}; the run stopped with a checkpoint of step {self.step} "
                             f"({path}): {err.fix}, then continue with `tinyzero resume {self.run_dir}`")

    def _sample_problems(self, count: int | None = None) -> list[dict]:
        count = count or self.config.rollout.prompts_per_step
        problems = self.curriculum.draw(count) if self.curriculum.on else [next(self._stream) for _ in range(count)]
        self.cursor += len(problems)
        return problems

    def _curriculum_state(self) -> dict | None:
        return copy.deepcopy(self.curriculum.state()) if self.curriculum.on else None

    def rollout(self, problems: list[dict], offset: int = 0, step: int | None = None) -> RolloutBatch:
        """G completions for each problem; ``offset``: prompts this step generated before these (their seeds);
        ``step``: steps done before the batch's own (default ``self.step``; one more for a batch generated ahead)."""
        settings = self.config.rollout
        step = self.step if step is None else step
        encoded = [self.encode(problem) for problem in problems]
        # A step's samples depend on (seed, step) only, so a resumed run repeats them: the engines' global
        # generators are reseeded (CPU), and each request carries its own seed where the platform takes one (GPU).
        self.roles.rollout.reseed(step_seed(self.config.run.seed, step))
        groups = self.roles.rollout.generate(
            [ids for _, ids in encoded], n=settings.samples_per_prompt, max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature, top_p=settings.top_p,
            seeds=request_seeds(self.config.run.seed, step, offset + len(encoded),
                                settings.samples_per_prompt)[offset:])
        rows = [(text, ids, problem, completion)
                for (text, ids), problem, group in zip(encoded, problems, groups, strict=True) for completion in group]
        return RolloutBatch(
            prompt_ids=[ids for _, ids, _, _ in rows], response_ids=[done.token_ids for *_, done in rows],
            texts=[done.text for *_, done in rows], finished=[done.finished for *_, done in rows],
            problems=[problem for _, _, problem, _ in rows], prompts=[text for text, *_ in rows],
            group_size=settings.samples_per_prompt,
            rollout_logprobs=(None if any(done.logprobs is None for *_, done in rows)
                              else [done.logprobs for *_, done in rows]),
        )

    def score(self, batch: RolloutBatch) -> ScoredBatch:
        results = self.scorer(batch.texts, batch.problems)
        comps = sorted({k for res in results for k in res.components})
        return ScoredBatch(
            rollout=batch,
            scores=torch.tensor([res.score for res in results], dtype=torch.float32),
            correct=torch.tensor([res.correct for res in results], dtype=torch.bool),
            reasons=[res.reason for res in results],
            components={k: torch.tensor([res.components.get(k, 0.0) for res in results]) for k in comps},
        )

    def advantages(self, scored: ScoredBatch, tokens, timer: Timer) -> TrainBatch:
        """The learner's batch: reference and old log-probs where the algorithm needs them, then the registered
        advantage estimator (``algo.name``, tinyzero/algos.py)."""
        algo, roles = self.config.algo, self.roles
        needs = algo.needs
        mask = tokens.response_mask  # [N, T]
        ref_logprobs = old_logprobs = critic_values = None
        if needs.reference:
            with timer("reference"):
                ref_logprobs = roles.reference.logprobs(tokens)  # [N, T]
        if needs.old_logprobs:
            with timer("old_logprobs"):
                old_logprobs = roles.learner.logprobs(tokens)  # [N, T]
        if needs.critic:
            critic_values = roles.learner.values(tokens)  # [N, T]
        kl_as_reward = needs.reference and algo.kl_applied_as == "reward"
        inputs = algos.AdvantageInputs(
            scores=scored.scores, response_mask=mask, group_size=scored.rollout.group_size, values=critic_values,
            kl=algos.kl_estimate(old_logprobs, ref_logprobs, algo.kl_estimator) if kl_as_reward else None,
            kl_coef=algo.kl_coef)
        estimator = algos.advantage_estimator(algo.name)
        out = estimator.fn(inputs, **{key: getattr(algo, key) for key in estimator.options})
        return TrainBatch(tokens=tokens, advantages=out.advantages, old_logprobs=old_logprobs,
                          ref_logprobs=ref_logprobs if algo.kl_applied_as == "loss" else None,
                          returns=out.returns, old_values=critic_values,
                          rollout_logprobs=pad_logprobs(scored.rollout.rollout_logprobs, mask.shape[1]))

    def train_step(self) -> dict:
        timer = Timer()
        start = time.perf_counter()
        collected = self._generate_groups(timer)
        scored, batch = collected.scored, collected.scored.rollout  # every group generated, kept or not
        with timer("rollout"):
            self.roles.rollout.sleep()  # colocated layouts: free vLLM's GPU memory for the update
        with timer("aha"):
            analyses = self.aha.analyse(batch.texts, batch.prompts, batch.problems)
            aha_metrics = self.aha.rollout_metrics(self.step + 1, analyses, scored.correct.tolist())
        train = self.options.on_train(collected.train_batch(), self.step + 1)  # reward.control acts here
        stats = self._update(train, timer)
        self.step += 1
        seconds = time.perf_counter() - start
        return self._log_step(collected, train, stats, timer, seconds, analyses, aha_metrics)

    def _log_step(self, collected: Collected, train: ScoredBatch, stats: dict, timer: Timer, seconds: float,
                  analyses: list, aha_metrics: dict, extra: dict | None = None) -> dict:
        """The finished step's metrics (``extra``: the overlap's own, after the common ones), its rows, samples,
        transcripts and progress line, written to the run log; returns the metrics."""
        config, scored = self.config, collected.scored
        metrics = self._step_metrics(scored, stats, timer, seconds)
        metrics["rollout/push_bytes"] = float(self._push_bytes)  # this step's push (0: none)
        self._push_bytes = 0
        metrics.update(extra or {})
        metrics.update(self.options.metrics(collected, train))  # dynamic sampling's, the overlong penalty's, a control's
        metrics.update(aha_metrics)
        rows = self._rows(scored, collected.row_kept(), train)
        self.log.scalars(self.step, metrics)
        self.log.rollouts(self.step, rows)
        self.log.text("samples/train", self.step, rows[: config.log.samples])
        self._log_transcripts(analyses, rows)
        self.log.progress(self.step, metrics, seconds, usd_per_s=self.meter.usd_for(1.0))
        return metrics

    def _generate_groups(self, timer: Timer, step: int | None = None) -> Collected:
        """Draw, generate and score this step's prompts: one round, or with ``rollout.filter_groups`` rounds until
        enough groups teach (tinyzero/step/dynamic_sampling.py). ``step``: as in ``rollout``."""

        def generate(problems: list[dict], offset: int) -> ScoredBatch:
            with timer("rollout"):
                batch = self.rollout(problems, offset, step)
            with timer("reward"):
                return self.options.on_scored(self.score(batch))  # rollout.overlong=penalty acts here

        return self.options.collect(self._sample_problems, generate)

    def _update(self, scored: ScoredBatch, timer: Timer) -> dict:
        """Advantages, the learner's update and the weight push for the groups the step trains on (none: no update,
        when dynamic sampling ran out of rounds before any group taught)."""
        stats = self._learn(scored, timer)
        self._push(timer)
        return stats

    def _push(self, timer: Timer) -> None:
        """The learner's weights into the rollout engines, unless they hold them already: a step that trained nothing
        (dynamic sampling kept no group) changed no weight, so a push would only cost its time."""
        if self._engine_version == self._updates:
            return
        with timer("sync"):
            self._push_bytes = self.roles.sync_weights()
        self._engine_version = self._updates

    def _learn(self, scored: ScoredBatch, timer: Timer) -> dict:
        """Advantages and the learner's update, without the push ({} when no group is trained on)."""
        if not len(scored.scores):
            return {}
        config = self.config
        batch = scored.rollout
        width = config.rollout.max_new_tokens if config.algo.loss_agg == "seq-mean-token-sum-norm" else None
        tokens = build_tokens(batch.prompt_ids, batch.response_ids, self._pad_id(), width)
        tokens = self.options.on_tokens(tokens, batch)  # rollout.overlong=mask acts here
        train_batch = self.advantages(scored, tokens, timer)
        with timer("learner"):
            stats = self.roles.learner.update(train_batch)
        self._updates += 1  # in the overlap's thread: the push that reads it runs after the update has returned
        return stats

    # ------------------------------------------------------------------- one-step-off-policy overlap
    def overlapped_step(self) -> dict:
        """``run.off_policy_steps=1`` (tinyzero/step/overlap.py): train on the batch generated ahead (or, after a checkpoint
        step, at the start, or on resume, generate it now), generating the next one beside the update; then push."""
        config, timer = self.config, Timer()
        start = time.perf_counter()
        pending = self._pending or self._generate_ahead(self.step)  # generated now: from the weights the engine has
        self._pending = None
        self._step_start = (pending.cursor_before, *self._step_start[1:])  # a failed step draws this batch again
        timer.seconds.update(pending.seconds)  # its generation, spent beside the previous update if it ran ahead
        collected = pending.collected
        scored, batch = collected.scored, collected.scored.rollout
        if batch.rollout_logprobs is None:  # the behaviour policy's log-probs are what makes the ratio right
            raise TinyZeroError(f"rollout.backend={config.rollout.backend} returned no log-probs of its samples, which "
                                "run.off_policy_steps=1 needs for the behaviour policy: use run.off_policy_steps=0")
        with timer("aha"):
            analyses = self.aha.analyse(batch.texts, batch.prompts, batch.problems)
            aha_metrics = self.aha.rollout_metrics(self.step + 1, analyses, scored.correct.tolist())
        train = self.options.on_train(collected.train_batch(), self.step + 1)
        stale = staleness(self._updates, pending)
        learn_timer = Timer()  # written by the update's thread only
        ahead = self.options.overlaps(self.step + 1)
        stats, self._pending = self._overlap.step(
            lambda: self._learn(train, learn_timer), (lambda: self._generate_ahead(self.step + 1)) if ahead else None,
            lambda: self._push(timer))
        timer.seconds.update(learn_timer.seconds)
        self.step += 1
        seconds = time.perf_counter() - start
        extra = {"rollout/staleness": float(stale)}
        if self._pending is not None:  # its prompts are drawn, but they belong to the next step
            extra["data/cursor"] = float(self._pending.cursor_before)
        return self._log_step(collected, train, stats, timer, seconds, analyses, aha_metrics, extra)

    def _generate_ahead(self, step: int) -> Pending:
        """The batch of step ``step`` + 1, from the weights the engines hold now."""
        timer, before, version = Timer(), self.cursor, self._engine_version
        collected = self._generate_groups(timer, step)
        return Pending(collected, version, before, timer.seconds)

    def _drop_pending(self) -> None:
        """A stop between steps: the batch generated for the next step is dropped and its prompts handed back to the
        data stream's cursor, so the resumed run draws and generates them again (from the checkpoint's weights)."""
        if self._pending is None:
            return
        self.cursor = self._pending.cursor_before  # the run ends here: the stream itself is not rewound
        self._pending = None
        self.log.say(f"the batch generated ahead for step {self.step + 1} is dropped: a resumed run generates it again")

    def _log_transcripts(self, analyses: list, rows: list[dict], kind: str = "rollout") -> None:
        for tag, blocks in pick_transcripts(self.aha, self.config.aha, self.step, analyses, rows, kind, self.run_dir):
            self.log.markdown(tag, self.step, blocks)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def _rows(self, scored: ScoredBatch, kept: list[bool], train: ScoredBatch) -> list[dict]:
        """Every generated completion with its real score; with dynamic sampling, whether the learner trained on it
        (``kept``); in a control run, the score the learner was given (kept rows only)."""
        b = scored.rollout
        rows = [
            {"prompt": b.prompts[i], "completion": b.texts[i], "score": float(scored.verdicts[i]),
             "correct": bool(scored.correct[i]), "reason": scored.reasons[i], "problem": b.problems[i]}
            for i in range(len(b.texts))
        ]
        if self.config.rollout.filter_groups != "none":
            for row, was_kept in zip(rows, kept, strict=True):
                row["kept"] = was_kept
        if train.verifier_scores is not None:  # a control run: also what the learner was given
            given = iter(train.scores.tolist())
            for row in (row for row, was_kept in zip(rows, kept, strict=True) if was_kept):
                row["control_score"] = next(given)
        return rows

    def _step_metrics(self, scored: ScoredBatch, stats: dict, timer: Timer, seconds: float) -> dict:
        b = scored.rollout
        lengths = torch.tensor([len(r) for r in b.response_ids], dtype=torch.float32)
        metrics = {
            "reward/mean": float(scored.verdicts.mean()),
            "reward/std": float(scored.verdicts.std()) if len(scored.verdicts) > 1 else 0.0,
            "reward/accuracy": float(scored.correct.float().mean()),
            "reward/format_rate": float(scored.components["format"].mean()) if "format" in scored.components else 0.0,
            "rollout/response_length_mean": float(lengths.mean()),
            "rollout/response_length_max": float(lengths.max()),
            "rollout/truncated_frac": 1.0 - sum(b.finished) / len(b.finished),
            "rollout/tokens_per_s": float(lengths.sum()) / max(timer.seconds.get("rollout", 0.0), 1e-9),
            "time/step": seconds,
        }
        # The learner's stats are train/ values, except those it names in full (rollout/mismatch_*).
        metrics.update({key if "/" in key else f"train/{key}": value for key, value in stats.items()})
        metrics.update({f"time/{phase}": spent for phase, spent in timer.seconds.items()})
        metrics["data/cursor"] = float(self.cursor)
        metrics.update(self.meter.metrics())
        return metrics

    # ------------------------------------------------------------------------------- eval, save
    def evaluate(self) -> dict:
        """Greedy decoding on the held-out problems (accuracy counts ``correct`` only); with ``eval.k``, also k
        samples per problem for pass@k and maj@k (tinyzero/analysis/evaluation.py)."""
        config = self.config
        encoded = [self.encode(problem) for problem in self.eval_problems]
        sampling = None
        if config.eval.k:
            sampling = Sampling((config.eval.k,), config.eval.k, config.rollout.temperature, config.rollout.top_p,
                                config.run.seed)
        outcome = evaluate(self.roles.rollout, self.env, [ids for _, ids in encoded], self.eval_problems,
                           self.scorer, max_new_tokens=config.eval.max_new_tokens, sampling=sampling)
        completions, results = outcome.greedy, outcome.greedy_results
        found, n = outcome.metrics, len(self.eval_problems)
        analyses = self.aha.analyse([done.text for done in completions], [text for text, _ in encoded],
                                    self.eval_problems)
        metrics = {"eval/accuracy": found["accuracy"], "eval/format_rate": found["format_rate"],
                   "eval/response_length": found["response_length"]}
        for key in (f"pass@{config.eval.k}", f"maj@{config.eval.k}"):
            if key in found:
                metrics[f"eval/{key}"] = found[key]
        metrics.update(self.aha.eval_metrics(analyses, [result.correct for result in results]))
        metrics["eval/seconds"] = found["seconds"]
        self.history.append({"step": self.step, **metrics, "n": n})
        self.log.tensorboard_scalars(self.step, metrics)  # the history above is the file record (checkpoint state)
        rows = [{"prompt": text, "completion": done.text, "score": result.score, "correct": result.correct,
                 "reason": result.reason, "problem": problem}
                for (text, _), done, result, problem in zip(encoded, completions, results, self.eval_problems,
                                                            strict=True)]
        self.log.text("samples/eval", self.step, rows[: config.log.samples])
        self.log.evals(self.step, rows)
        self._log_transcripts(analyses, rows, kind="eval")
        scaling = "".join(f", {key.removeprefix('eval/')} {metrics[key]:.1%}" for key in metrics
                          if key.startswith(("eval/pass@", "eval/maj@")))
        self.log.say(f"eval at step {self.step}: greedy accuracy {metrics['eval/accuracy']:.1%} on {n} held-out "
                     f"problems{scaling}, format {metrics['eval/format_rate']:.1%}, "
                     f"length {metrics['eval/response_length']:.0f}")
        return metrics

    def save(self) -> Path:
        state = {"step": self.step, "cursor": self.cursor, "history": self.history,
                 "config": dataclasses.asdict(self.config), "wall_s": self.meter.seconds, "aha": self.aha.state()}
        if self.curriculum.on:
            state["curriculum"] = self.curriculum.state()
        def write(folder: Path) -> None:
            self.roles.learner.save(str(folder))
            # A checkpoint's policy/ loads on its own (HF, vLLM); LoRA's adapter/ needs the base, and the tokenizer.
            self.tokenizer.save_pretrained(folder / (ADAPTER_DIR if self.config.model.lora.rank else "policy"))

        path = save_checkpoint(self.run_dir, self.step, state, write, self.config.checkpoint.keep_last)
        return path

    def summary(self) -> dict:
        first, last = self.history[0], self.history[-1]
        return {"before": first["eval/accuracy"], "after": last["eval/accuracy"], "n": last["n"],
                "steps": self.step, "run_dir": str(self.run_dir), "stopped": self.stopped,
                "gpu_hours": self.meter.gpu_hours, "usd": self.meter.usd if self.meter.price else None}

    def close(self) -> None:
        if self._overlap is not None:
            self._overlap.close()
        self.log.close()
        self.scorer.close()
        self.roles.close()


def step_seed(seed: int, step: int) -> int:
    """The seed of a step's sampling: a function of (run seed, step) only."""
    return seed * 1_000_003 + step


def request_seeds(seed: int, step: int, prompts: int, group: int) -> list[int]:
    """One seed per prompt; vLLM gives the prompt's i-th sample seed + i, so prompts are ``group`` apart and
    steps 2**24 apart: no two samples of a run share a random stream (below 2**24 samples a step)."""
    base = (step_seed(seed, step) << 24) % (1 << 62)
    return [base + i * group for i in range(prompts)]


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
