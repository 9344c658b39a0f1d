"""Shared fixtures: tiny random models built once per test session (no hub, about a second each); the ``gpu``
marker: tests that need CUDA are skipped, with the reason, where ``torch.cuda.is_available()`` is false; and the
schedule of a parallel run.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist loadgroup``): most of its time is a few
end-to-end tests that each start processes (vLLM, Ray actors, a CLI) and wait on imports, which a second worker
overlaps. In a worker, three things keep that right:

- a test marked ``ray`` starts a Ray cluster (in this process or a child): all of them run one after another in one
  worker, the ``ray`` group, because tests/test_cluster.py ends its head with ``ray stop --force``, which stops every
  Ray on the machine (and two clusters at once would share two cores between their actors). A test that calls
  ``ray.init`` in a worker without the mark fails and says so;
- the tests that share a module-scoped fixture (a trained run, a vLLM engine) run in one worker, so it is built once;
- the long ones (``ray``, the shared fixtures', ``slow``) are handed out first, so no worker is left with one at
  the end while the other waits.
"""

import os
import shutil
import tempfile

import pytest
from tiny_models import build_tiny_model

from tinyzero.engine.rollout import COMPILE_CACHE_ENV

pytest_plugins = ["pytester"]  # tests/test_markers.py runs a small suite through this conftest

GPU_SKIP_REASON = "needs a CUDA GPU: torch.cuda.is_available() is false on this machine"

# One compile cache for the session's vLLM engines (tinyzero/engine/rollout.py, COMPILE_CACHE_ENV): each engine
# start in a fresh run folder would otherwise compile the same inductor kernels again, about 10 s of g++ each.
# Made here, before any worker or subprocess starts, so all of them inherit it; removed by the process that made it.
_made_compile_cache = ""
if not os.environ.get(COMPILE_CACHE_ENV):
    _made_compile_cache = os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix="tinyzero-tests-kernels-")


def pytest_unconfigure(config):
    if _made_compile_cache:
        shutil.rmtree(_made_compile_cache)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks added here
def pytest_collection_modifyitems(config, items):
    _skip_gpu_tests_without_a_gpu(items)
    if hasattr(config, "workerinput"):  # an xdist worker: each collects the same items and orders them alike
        items[:] = _scheduled(items)


def _skip_gpu_tests_without_a_gpu(items):
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))


RAY_GROUP = "ray"


def _group(item) -> str:
    """The xdist group ``item`` must run in ("" for none): ``ray``, else its module's when it uses a fixture
    shared by that module (or its class)."""
    if item.get_closest_marker("ray") is not None:
        return RAY_GROUP
    fixtures = getattr(item, "_fixtureinfo", None)
    for defs in (fixtures.name2fixturedefs.values() if fixtures else ()):
        if any(d.scope in ("module", "class") for d in defs):
            return item.module.__name__
    return ""


def _scheduled(items):
    """``items`` with their xdist groups marked, the Ray group first, then the other groups and the slow tests,
    then the rest; otherwise in collection order (the sort is stable)."""
    rank = {}
    for item in items:
        group = _group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        rank[item] = 0 if group == RAY_GROUP else 1 if group or item.get_closest_marker("slow") else 2
    return sorted(items, key=rank.__getitem__)


@pytest.fixture(autouse=True)
def _ray_only_in_its_group(request, monkeypatch):
    """In an xdist worker, a test that starts Ray in this process must be marked ``ray`` (see above)."""
    if not hasattr(request.config, "workerinput") or request.node.get_closest_marker("ray") is not None:
        yield
        return
    try:
        import ray
    except ImportError:
        yield
        return

    def refused(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts Ray but is not marked @pytest.mark.ray: mark it, so "
                             "that it runs in the one worker that runs Ray (tests/conftest.py)")

    monkeypatch.setattr(ray, "init", refused)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen2 with a separate lm_head (untied), float32, byte-level tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), arch="qwen2", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tiny_tied_model_dir(tmp_path_factory):
    """A tiny random Llama whose lm_head is tied to its input embeddings, like SmolLM2."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama-tied"), arch="llama", tie_word_embeddings=True
    )
