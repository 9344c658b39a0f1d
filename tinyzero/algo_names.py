"""The values the algorithm settings accept, as ``Literal`` types, in a module without torch.

``tinyzero/config.py`` types its fields with these, so reading a recipe or printing ``--help-config`` does not
pay for importing torch; ``tinyzero/algos.py`` (the math, which needs torch) re-exports them. Registered names
(advantage estimators, policy losses) are not here: they live in the registry in ``algos.py`` and are looked up
only when a config value is checked.
"""

from __future__ import annotations

import typing
from typing import Literal

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KlEstimator = Literal["k1", "k2", "k3"]
RolloutCorrection = Literal["none", "tis", "mis"]
AGG_MODES = typing.get_args(LossAgg)
KL_ESTIMATORS = typing.get_args(KlEstimator)
ROLLOUT_CORRECTIONS = typing.get_args(RolloutCorrection)
