"""User-fixable errors.

Anything a user can cause (a bad recipe, a missing model, malformed input) raises TinyZeroError with one
sentence naming the cause and the fix; the command line prints that sentence alone, with no traceback.
"""


class TinyZeroError(Exception):
    """A user-fixable error; its message names the cause and the fix."""
