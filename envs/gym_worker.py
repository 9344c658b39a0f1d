"""A resource-limited process that runs reasoning-gym verifiers we do not trust in ours (docs/gym.md).

The client (:class:`Verifier`) starts ``python -m tinyzero.envs.gym_worker`` with pipes, sends it one set-up
line (task, generator options, limits), waits for ``ready``, then one JSON line per answer; each answer has a
wall-clock limit. A worker that misses it is killed (its whole process group) and the answer scores
``verifier_timeout``; one that dies or answers garbage scores ``verifier_error``; either way the next answer
starts a fresh worker, and training goes on. A worker that cannot start ``START_FAILURES_TO_STOP`` times in a
row (a machine out of memory, say) is different: every answer would score 0 for no fault of the policy, so the
client raises ``VerifierUnavailable`` (a ``StopRun``: the trainer stops with a checkpoint and one sentence).

Inside, before any answer is read: address-space, file-size (0: it cannot write files), core-dump and
process-count limits; a CPU-seconds limit re-armed per answer (SIGXCPU ends a loop that ignores the wall
clock); ``eval`` in reasoning-gym's modules replaced by ``literal_value``. subprocess rather than
multiprocessing: the trainer's reward pool workers may start one, and a pipe to a fresh interpreter neither
forks a threaded process nor needs a ``__main__`` guard. One worker per (task, options) per process, reused.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import NoReturn

from tinyzero.errors import StopRun

START_TIMEOUT_S = 120.0  # importing reasoning-gym and building a dataset; not charged to any answer
START_FAILURES_TO_STOP = 3  # consecutive start failures after which scoring stops instead of scoring zeros
CPU_SLACK_S = 1.0  # CPU seconds past the wall limit before SIGXCPU (the wall limit normally fires first)


class VerifierTimeout(Exception):
    """The worker did not answer within the time limit (it has been killed)."""


class VerifierError(Exception):
    """The worker could not score: it crashed, could not start, or the verifier raised."""


class VerifierUnavailable(StopRun):
    """The worker failed to start ``START_FAILURES_TO_STOP`` times in a row: no answer can be scored."""


class Verifier:
    """Client side: score answers in a worker process, restarting it after a timeout or a crash."""

    def __init__(self, task: str, generator: str, *, timeout_s: float, memory_mb: int):
        self.setup = {"task": task, "generator": generator, "memory_mb": memory_mb,
                      "cpu_s": int(timeout_s + CPU_SLACK_S + 0.999)}
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._buffer = b""
        self._dying: list[subprocess.Popen] = []  # killed workers not yet reaped
        self._lock = threading.Lock()
        self._start_failures = 0  # in a row; a worker that gets ready resets it

    def score(self, answer: str, problem: dict) -> float:
        """The verifier's score, or VerifierTimeout / VerifierError."""
        with self._lock:
            proc = self._ensure()
            try:
                proc.stdin.write((json.dumps({"answer": answer, "problem": problem}) + "\n").encode())
                proc.stdin.flush()
            except OSError:
                self.close()
                raise VerifierError("the verifier worker's pipe is closed") from None
            reply = self._read_line(self.timeout_s)
        if "error" in reply:
            raise VerifierError(reply["error"])
        return reply["score"]

    def wait_ready(self) -> None:
        """Start the worker if needed and wait until it is ready (raises VerifierError if it cannot start)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self.close()
            self._spawn()
        if not self._ready:
            try:
                ready = self._read_line(START_TIMEOUT_S)
            except VerifierTimeout:
                self._start_failed(f"it did not start within {START_TIMEOUT_S:.0f} s")
            except VerifierError as err:
                self._start_failed(str(err))
            if not ready.get("ready"):
                self.close()
                self._start_failed(f"it could not start: {ready.get('error', 'no reason')}")
            self._ready, self._start_failures = True, 0
        return self._proc

    def _start_failed(self, reason: str) -> NoReturn:
        """One more start failure in a row: VerifierError (this answer scores 0), or at the limit
        VerifierUnavailable."""
        self._start_failures += 1
        if self._start_failures >= START_FAILURES_TO_STOP:
            raise VerifierUnavailable(
                f"the reasoning-gym verifier worker for {self.setup['task']} failed to start "
                f"{self._start_failures} times in a row (last: {reason[:200]})",
                "free memory and CPU on this machine (or raise the task's memory_mb option)")
        raise VerifierError(f"the verifier worker did not start: {reason}")

    def _spawn(self) -> None:
        """Start a worker without waiting for it: after a kill the next one loads while the caller moves on."""
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tinyzero.envs.gym_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self._ready = False
        _LIVE.add(self)
        self._proc.stdin.write((json.dumps(self.setup) + "\n").encode())
        self._proc.stdin.flush()

    def _read_line(self, timeout_s: float) -> dict:
        """One JSON reply, read with select so a silent worker cannot block us past the deadline."""
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._restart()
                raise VerifierTimeout()
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker died: killed by a limit, or crashed
                died_of_cpu = self._proc.wait() == -signal.SIGXCPU
                if self._ready:
                    self._restart()
                else:
                    self.close()
                raise VerifierTimeout() if died_of_cpu else VerifierError("the verifier worker died")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            self.close()
            raise VerifierError("the verifier worker wrote something that is not JSON") from None
        if not isinstance(reply, dict):
            self.close()
            raise VerifierError("the verifier worker wrote something that is not an object")
        return reply

    def _restart(self) -> None:
        ready = self._ready
        self.close()
        if ready:  # a worker that never got ready is not restarted in a loop; the next answer tries once more
            self._spawn()

    def close(self) -> None:
        proc, self._proc, self._buffer, self._ready = self._proc, None, b"", False
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:  # a big process can take a while to die: reap it later, not now
            self._dying.append(proc)
        self._dying = [p for p in self._dying if p.poll() is None]
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def __getstate__(self):  # a process handle does not travel: a copy starts its own worker when first used
        return {"setup": self.setup, "timeout_s": self.timeout_s}

    def __setstate__(self, state):
        self.__init__(state["setup"]["task"], state["setup"]["generator"], timeout_s=state["timeout_s"],
                      memory_mb=state["setup"]["memory_mb"])
        self.setup = state["setup"]


_LIVE: set[Verifier] = set()


@atexit.register
def _close_all() -> None:
    for verifier in list(_LIVE):
        verifier.close()


# ------------------------------------------------------------------------------------------ the worker side
def _limit(memory_mb: int) -> None:
    import resource

    def cap(which, value):
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value if which != resource.RLIMIT_CPU else hard))

    cap(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    cap(resource.RLIMIT_FSIZE, 0)
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NPROC, 0)


def _arm_cpu(seconds: int) -> None:
    """The CPU-seconds limit counts from process start: re-arm it at (used so far + seconds) per answer."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime) + seconds
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _swap_eval() -> None:
    """reasoning-gym's modules look ``eval`` up in their globals first: give them the literal-only one."""
    from tinyzero.envs.gym_safety import literal_value

    for name, module in list(sys.modules.items()):
        if name.startswith("reasoning_gym") and module is not None:
            module.__dict__["eval"] = literal_value


def _reply(out, obj: dict) -> None:
    out.write(json.dumps(obj) + "\n")
    out.flush()


def score_of(dataset, answer: str, entry: dict) -> int | float:
    """The verifier's score as it is, for the client to judge as it judges an in-process one (JSON carries NaN and
    the infinities); only a score that is no number at all is an error here. float() would turn True into 1.0."""
    score = dataset.score_answer(answer, entry)
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise TypeError(f"the verifier returned a {type(score).__name__}, not a number")
    return score


def main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # a verifier that prints must not corrupt the protocol
    setup = json.loads(sys.stdin.readline())
    try:
        _limit(setup["memory_mb"])
        from tinyzero.envs.gym import build_dataset, entry_of

        dataset = build_dataset(setup["task"], setup["generator"])
        _swap_eval()
    except Exception as err:  # noqa: BLE001 - any start-up failure is reported, not raised
        _reply(out, {"error": f"{type(err).__name__}: {err}"[:300]})
        return 1
    _reply(out, {"ready": True})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            _arm_cpu(setup["cpu_s"])
            entry = entry_of(request["problem"], setup["task"], setup["generator"])
            _reply(out, {"score": score_of(dataset, request["answer"], entry)})
        except Exception as err:  # noqa: BLE001 - MemoryError, RecursionError, a verifier's own bug: all score 0
            _reply(out, {"error": f"{type(err).__name__}: {err}"[:300]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
