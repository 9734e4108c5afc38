"""Steering: apply maps inside a model, each site in the cheapest exact mode (docs/design.md §3).

:func:`steer` plans (:func:`plan`: fold / fused / op per site, with reasons) and installs;
the returned :class:`SteeringHandle` changes λ and the per-row map set and undoes everything.
"""

from act_fast.steering.apply import steer
from act_fast.steering.handle import SteeringHandle
from act_fast.steering.plan import MODES, SitePlan, plan

__all__ = ["MODES", "SitePlan", "SteeringHandle", "plan", "steer"]
