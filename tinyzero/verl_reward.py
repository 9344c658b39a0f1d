"""The name that verl exports written before the package was grouped by job import (``reward.py`` of an
earlier ``tinyzero export verl``): it keeps them working. The module is ``tinyzero.interop.verl_reward``."""

from tinyzero.interop.verl_reward import score  # noqa: F401
