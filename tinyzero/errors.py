"""User-fixable errors.

Anything a user can cause (a bad recipe, a missing model, malformed input) raises TinyZeroError with one
sentence naming the cause and the fix; the command line prints that sentence alone, with no traceback.
"""


class TinyZeroError(Exception):
    """A user-fixable error; its message names the cause and the fix."""


class StopRun(TinyZeroError):
    """A failure after which a training run cannot go on but its last good state can be kept: the driver saves it
    as a checkpoint, then stops with one sentence made of ``message`` (what happened) and ``fix`` (what to change
    before ``tinyzero resume``). Raised by the roles (a refused update) and by rewards (a verifier that will not
    start); it pickles, so it crosses process pools and Ray as itself."""

    def __init__(self, message: str, fix: str):
        super().__init__(message, fix)
        self.message, self.fix = message, fix

    def __str__(self) -> str:
        return f"{self.message}: {self.fix}"


class NonFiniteUpdate(StopRun):
    """The learner refused an optimizer step whose loss, gradient or learning rate was NaN or infinite."""
