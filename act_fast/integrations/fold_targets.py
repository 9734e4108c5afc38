"""Where a per-channel affine map on a module's output can be folded: the module's own affine
parameters, by module class (data, not code paths per family).

For an output ``y`` with channels along the scale's ``axis``, folding ``y' = y + λ((w − 1) y + b)``
writes ``scale + (scale + offset) · λ(w − 1)`` into ``scale`` and ``shift + shift · λ(w − 1) + λ b``
into ``shift`` (which must exist unless ``b = 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from act_fast.integrations.norms import class_key, norm_spec


@dataclass(frozen=True)
class FoldTarget:
    """The affine parameters that produce a module's output channels.

    Attributes:
        scale: multiplies each output channel (a norm's weight, a linear layer's weight).
        axis: the dim of ``scale`` that indexes output channels (0 for ``nn.Linear``'s
            ``[out, in]``, 1 for GPT-2's ``Conv1D`` ``[in, out]``).
        offset: the effective scale is ``scale + offset`` (1.0 for Gemma's ``1 + w``).
        shift: the output bias, or None when the module has none.
    """

    scale: nn.Parameter
    axis: int
    offset: float
    shift: nn.Parameter | None


# Exact class (module.qualname) -> its fold target; subclasses are not matched (they may override forward).
LINEAR_CLASSES: dict[str, Callable[[nn.Module], FoldTarget]] = {
    "torch.nn.modules.linear.Linear": lambda m: FoldTarget(m.weight, 0, 0.0, m.bias),
    "transformers.pytorch_utils.Conv1D": lambda m: FoldTarget(m.weight, 1, 0.0, m.bias),  # GPT-2's [in, out] linear
}


def fold_target(module: nn.Module, pool_spatial: bool = True) -> FoldTarget | str:
    """The module's :class:`FoldTarget`, or why a map on its output cannot be folded.

    ``pool_spatial``: maps on conv features act on each plane's spatial mean, which no affine
    parameter can express (GroupNorm with ``pool_spatial=False`` folds like any norm).
    """
    spec = norm_spec(module)
    if spec is not None:
        if spec.kind == "group" and pool_spatial:
            return "a pooled map on conv features depends on the spatial mean, not on each value"
        if spec.weight is None:
            return "the norm has no affine weight to fold into"
        return FoldTarget(spec.weight, 0, spec.weight_offset, spec.bias)
    if "forward" in vars(module):
        return f"{type(module).__name__} has a replaced forward"
    make = LINEAR_CLASSES.get(class_key(type(module)))
    if make is None:
        return f"{type(module).__name__} is neither a registered norm nor a linear layer"
    return make(module)
