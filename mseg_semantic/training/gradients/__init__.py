"""The ways to make gradients, side by side behind one contract (:mod:`.common`):

- ``ce``: cross-entropy, MSeg's objective (:mod:`.cross_entropy`);
- ``mgda``: the MGDA multi-task baseline (:mod:`.mgda`, ``DATA.use_mgda``);
- ``ccsa``: the CCSA domain-generalization baseline (:mod:`.ccsa`, ``CCSA.use_ccsa``).

:func:`backward_step_for` binds a method's typed options once, from its config section.
"""

from __future__ import annotations

import functools
from typing import Any

from mseg_semantic.training.gradients.ccsa import CCSAOptions, ccsa_backward_step
from mseg_semantic.training.gradients.common import BackwardStep, StepContext, StepOutput
from mseg_semantic.training.gradients.cross_entropy import ce_backward_step
from mseg_semantic.training.gradients.mgda import MGDAOptions, mgda_backward_step

__all__ = ["METHODS", "BackwardStep", "StepContext", "StepOutput", "backward_step_for"]

METHODS = ("ce", "mgda", "ccsa")


def backward_step_for(method: str, cfg: Any) -> BackwardStep:
    """The backward step of ``method`` with its options read from the config's section of the same name."""
    if method == "mgda":
        return functools.partial(mgda_backward_step, options=MGDAOptions.from_config(cfg.MGDA))
    if method == "ccsa":
        return functools.partial(ccsa_backward_step, options=CCSAOptions.from_config(cfg.CCSA))
    if method == "ce":
        return ce_backward_step
    raise ValueError(f"unknown training method {method!r}; valid: {', '.join(METHODS)}")
