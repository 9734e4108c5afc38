"""The AcT reference implementation (github.com/apple/ml-act, commit d2c3560), re-written for tests.

What its hooks fit, what ``hook.state_dict()`` holds after ``hook.fit()``, the ``.statedict`` files
``act/scripts/learn_intervention.py`` writes, and what each hook's forward does to a module output.
Written from reading the reference (nothing is imported from it; it is not installed); every piece
names the reference file and function it mirrors. The hooks are ``nn.Module`` subclasses with the
reference's buffer, parameter and submodule names, so ``state_dict()`` returns the same
``OrderedDict`` (with its ``_metadata``) and ``torch.save`` writes the same pickle structure.

Only what act_fast imports is mirrored: the closed-form Linear-OT fit (``use_gd=False``, the
reference default), intervention position ``"all"``, hooks in float32 (the configs' ``dtype``).
"""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REFERENCE_COMMIT = "d2c3560"
Q_ALL_BOUNDS = [-1e6, 1e6]  # act/hooks/transport.py, _post_load: what "q_all" becomes


def compute_quantiles(z: Tensor) -> dict[str, list[Tensor]]:
    """act/utils/quantiles.py, ``compute_quantiles``: support name → ``[lo [C], hi [C]]`` of the
    source ``z: [N, C]`` (``torch.quantile``, in ``z``'s dtype), in the reference's order."""
    levels = {
        "q_0_100": (0.00, 1.0),
        "q_0.5_99.5": (0.005, 0.995),
        "q_1_99": (0.01, 0.99),
        "q_2_98": (0.02, 0.98),
        "q_5_95": (0.05, 0.95),
        "q_10_90": (0.10, 0.90),
        "q_20_80": (0.20, 0.80),
        "q_30_70": (0.30, 0.70),
        "q_40_60": (0.40, 0.60),
    }
    return {name: [torch.quantile(z, q=lo, dim=0), torch.quantile(z, q=hi, dim=0)] for name, (lo, hi) in levels.items()}


def solve_ot_1d(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """act/optimal_transport/ot_maps.py, ``solve_ot_1d``: 1-D OT between equal-size samples is sorting."""
    assert len(p) == len(q), "the reference needs as many source as target samples"
    return torch.sort(p, 0)[0], torch.sort(q, 0)[0]


def auroc(responses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """act/utils/auroc.py, ``compute_auroc``: per column, sklearn's ``roc_auc_score(labels,
    responses, average=None)`` with label True (the source) positive. Computed here as the
    Mann-Whitney statistic with tied values counted one half (the trapezoidal ROC area, which is
    what ``roc_auc_score`` integrates); float64 ``[C]``."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    out = np.empty(responses.shape[1])
    for c in range(responses.shape[1]):
        v = responses[:, c].astype(np.float64)
        order = np.argsort(v, kind="stable")
        sorted_v = v[order]
        ranks = np.empty(len(v))
        start = 0
        while start < len(v):  # average rank (1-based) over each run of tied values
            stop = start
            while stop + 1 < len(v) and sorted_v[stop + 1] == sorted_v[start]:
                stop += 1
            ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
            start = stop + 1
        out[c] = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


class LinearProj(nn.Module):
    """act/optimal_transport/archs.py, ``LinearProj``: ``w1, b1`` parameters ``[1, C]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(1, dim))
        self.b1 = nn.Parameter(torch.zeros((1, dim)))

    def forward(self, x: Tensor) -> Tensor:  # LinearProj.forward, reverse=False
        return x * self.w1 + self.b1

    def optimize(self, x: np.ndarray, y: np.ndarray, rng: np.random.RandomState) -> None:
        """``LinearProj.optimize``: per-channel least squares of sorted target on sorted source,
        float64, with the reference's ``1e-8 * randn`` added to the source after its mean is taken
        (``rng`` stands for numpy's global generator, which the reference seeds with ``cfg.seed``)."""
        x, y = x.astype(np.float64), y.astype(np.float64)
        m_x = np.mean(x, axis=0, keepdims=True)
        m_y = np.mean(y, axis=0, keepdims=True)
        x += 1e-8 * rng.randn(*x.shape)
        x_bar, y_bar = x - m_x, y - m_y
        beta = np.sum(x_bar * y_bar, axis=0, keepdims=True) / np.sum(x_bar**2, axis=0, keepdims=True)
        alpha = m_y - beta * m_x
        self.load_state_dict({"w1": torch.tensor(beta, dtype=self.w1.dtype), "b1": torch.tensor(alpha, dtype=self.w1.dtype)})


class InterventionHook(nn.Module):
    """act/hooks/intervention_hook.py, ``InterventionHook``: a forward hook on ``module_name``
    (``"name:i"`` selects output ``i`` of a tuple), computing in ``dtype``."""

    def __init__(self, module_name: str, dtype: torch.dtype = torch.float32, strength: float = 1.0) -> None:
        super().__init__()
        self.module_name = module_name
        self.select_output = int(module_name.split(":")[1]) if ":" in module_name else None
        self.dtype = dtype
        self.strength = float(strength)

    def __call__(self, module: t.Any, input_: t.Any, output: t.Any) -> t.Any:
        """``InterventionHook.__call__`` with ``intervention_position="all"``: pick the output,
        ``[B, C]`` → ``[B, 1, C]``, cast to the hook dtype, ``forward``, cast back."""
        selected = output[self.select_output] if isinstance(output, tuple) and self.select_output is not None else output
        squeeze = selected.ndim == 2
        if squeeze:
            selected = selected[:, None, :]
        dtype = selected.dtype
        new = self.forward(module, input_, selected.to(self.dtype)).to(dtype)
        if squeeze:
            new = new[:, 0, :]
        if isinstance(output, tuple) and self.select_output is not None:
            items = list(output)
            items[self.select_output] = new
            return tuple(items)
        return new

    def save_state_dict(self, state_path: Path) -> None:
        """``InterventionHook.save_state_dict``."""
        torch.save(self.state_dict(), state_path)


class GaussianOTHook(InterventionHook):
    """act/hooks/transport.py, ``GaussianOTHook`` (and, with ``onlymean``, ``OnlyMeanHook``).

    Buffers ``mu1, std1`` (source, label True), ``mu2, std2`` (target) ``[C]`` in the hook dtype;
    ``quantiles_dict_src`` (float64, from the float64 source) and ``quantiles_src`` outside them.
    """

    def __init__(self, module_name: str, strength: float = 1.0, std_eps: float = 1e-4, quantiles_src: str = "q_all",
                 onlymean: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(module_name, dtype, strength)
        self.onlymean = bool(onlymean)  # not a hook_* attribute: never saved (the reference's own bug)
        self.std_eps = float(std_eps)
        self.quantiles_src: t.Any = str(quantiles_src)
        for name in ("mu1", "mu2", "std1", "std2"):
            self.register_buffer(name, torch.empty(0))
        self.quantiles_dict_src: dict[str, list[Tensor]] | None = None

    def state_dict(self, *args: t.Any, **kwargs: t.Any) -> dict[str, t.Any]:
        """``GaussianOTHook.state_dict``: the buffers, then ``quantiles_dict_src``, then
        ``quantiles_src`` as ``_post_load`` left it (bounds, not the name)."""
        d = super().state_dict()
        d.update({"quantiles_dict_src": self.quantiles_dict_src})
        d.update({"quantiles_src": self.quantiles_src})
        return d

    def load_state_dict(self, state_dict: t.Mapping[str, t.Any], strict: bool = True, assign: bool = False) -> None:
        """``GaussianOTHook.load_state_dict``: buffers and ``quantiles_dict_src`` from the file; the
        saved ``quantiles_src`` is ignored (the constructor's name is used), then ``_post_load``."""
        for name, _ in self.named_buffers():
            setattr(self, name, state_dict[name].to(self.dtype))
        self.quantiles_dict_src = {k: [v[0], v[1]] for k, v in state_dict["quantiles_dict_src"].items()}
        self._post_load()

    def fit(self, responses: Tensor, labels: Tensor) -> None:
        """``GaussianOTHook.fit``: moments in float64 (unbiased std), stored in the hook dtype."""
        z = responses.to(torch.float64)
        labels = labels.to(torch.bool)
        self.mu1 = torch.mean(z[labels], dim=0).to(self.dtype)
        self.std1 = torch.std(z[labels], dim=0).to(self.dtype)
        self.mu2 = torch.mean(z[~labels], dim=0).to(self.dtype)
        self.std2 = torch.std(z[~labels], dim=0).to(self.dtype)
        self.quantiles_dict_src = compute_quantiles(z[labels])
        self._post_load()

    def _post_load(self) -> None:
        """``GaussianOTHook._post_load``: the std mask, the masked moments, and ``quantiles_src``
        REPLACED by its bounds: ``[-1e6, 1e6]`` for ``q_all``, else the named entry restricted to
        the mask and viewed ``[1, C_kept]``."""
        self.mask = torch.ones_like(self.mu1, dtype=torch.bool) & (self.std1 > self.std_eps) & (self.std2 > self.std_eps)
        self.mu1_m, self.mu2_m = self.mu1[self.mask], self.mu2[self.mask]
        self.std1_m, self.std2_m = self.std1[self.mask], self.std2[self.mask]
        self.std1_2_m = self.std2_m / self.std1_m
        if self.quantiles_src == "q_all":
            self.quantiles_src = list(Q_ALL_BOUNDS)
        else:
            self.quantiles_src = copy.deepcopy(self.quantiles_dict_src[self.quantiles_src])
            self.quantiles_src[0] = self.quantiles_src[0][self.mask].view(1, -1)
            self.quantiles_src[1] = self.quantiles_src[1][self.mask].view(1, -1)

    def forward(self, module: t.Any, input_: t.Any, output: Tensor) -> Tensor:
        """``GaussianOTHook.forward`` (without its in-place write into the module's output): only
        std-mask channels change; the support is tested on the value (``[B, T, C]``) or on the
        spatial mean (``[B, C, H, W]``); the map is per element in both cases."""
        shape = output.shape
        output = output.clone()
        if len(shape) == 3:
            output = output.view(-1, shape[2])
            view = (1, -1)
            z_unit = output[:, self.mask]
            z_mask = z_unit
        elif len(shape) == 4:
            view = (1, -1, 1, 1)
            z_unit = output[:, self.mask]
            z_mask = z_unit.mean(dim=(2, 3), keepdim=False)
        else:
            raise NotImplementedError("the reference handles [B, T, C] and [B, C, H, W] outputs")
        mu1, mu2, ratio = self.mu1_m.view(*view), self.mu2_m.view(*view), self.std1_2_m.view(*view)
        pool_mask = ((self.quantiles_src[0] < z_mask) & (z_mask < self.quantiles_src[1])).to(z_unit.dtype)
        z_ot = (z_unit - mu1) + mu2 if self.onlymean else ratio * (z_unit - mu1) + mu2
        z_ot = self.strength * z_ot + (1 - self.strength) * z_unit
        if len(shape) == 4:
            pool_mask = pool_mask[..., None, None]
        output[:, self.mask] = pool_mask * z_ot + (1 - pool_mask) * z_unit
        inside = torch.zeros(output.shape, dtype=torch.bool)  # for tests: where the map applies
        inside[:, self.mask] = pool_mask.bool().expand_as(z_unit)
        self.last_inside = inside.view(*shape)
        return output.view(*shape)


def OnlyMeanHook(module_name: str, **kwargs: t.Any) -> GaussianOTHook:
    """act/hooks/transport.py, ``OnlyMeanHook``: a GaussianOTHook with ``onlymean`` hard-coded."""
    return GaussianOTHook(module_name, onlymean=True, **kwargs)


class LinearOTHook(InterventionHook):
    """act/hooks/transport.py, ``LearnableOTHook`` + ``LinearOTHook`` (closed form, ``use_gd=False``).

    Submodule ``net`` (:class:`LinearProj`): ``state_dict()`` keys ``net.w1``, ``net.b1`` ``[1, C]``;
    ``quantiles_dict_src`` from the float32 source.
    """

    def __init__(self, module_name: str, strength: float = 1.0, quantiles_src: str = "q_all",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        super().__init__(module_name, dtype, strength)
        self.quantiles_src: t.Any = str(quantiles_src)
        self.quantiles_dict_src: dict[str, list[Tensor]] | None = None
        self.net: LinearProj | None = None
        self.rng = np.random.RandomState(seed)

    def state_dict(self, *args: t.Any, **kwargs: t.Any) -> dict[str, t.Any]:
        """``LearnableOTHook.state_dict``: ``net.*``, then ``quantiles_dict_src``, ``quantiles_src``."""
        d = super().state_dict()
        d.update({"quantiles_dict_src": self.quantiles_dict_src})
        d.update({"quantiles_src": self.quantiles_src})
        return d

    def load_state_dict(self, state_dict: t.Mapping[str, t.Any], strict: bool = True, assign: bool = False) -> None:
        """``LearnableOTHook.load_state_dict``: ``quantiles_dict_src``, a ``LinearProj`` of width
        ``net.w1.shape[-1]`` loaded from the ``net.*`` keys; the saved ``quantiles_src`` is ignored
        (the constructor's name is used), then ``_post_load``."""
        self.quantiles_dict_src = {k: [v[0], v[1]] for k, v in state_dict["quantiles_dict_src"].items()}
        self.net = LinearProj(dim=state_dict["net.w1"].shape[-1])
        super().load_state_dict({k: v for k, v in state_dict.items() if k.startswith("net.")})
        self._post_load()

    def fit(self, responses: Tensor, labels: Tensor) -> None:
        """``LearnableOTHook.fit`` + ``LinearOTHook._fit_net``: float32 responses, per-channel sorted
        pairs, ``LinearProj.optimize``, quantiles of the float32 source, then ``_post_load``."""
        z = responses.to(torch.float32)
        labels = labels.to(torch.bool)
        z_src, z_dst = z[labels], z[~labels]
        z_src_ot, z_dst_ot = torch.empty_like(z_src), torch.empty_like(z_dst)
        for idx in range(z_src.shape[-1]):
            z_src_ot[:, idx], z_dst_ot[:, idx] = solve_ot_1d(z_src[:, idx], z_dst[:, idx])
        self.quantiles_dict_src = compute_quantiles(z[labels])
        self.net = LinearProj(dim=z_src.shape[-1]).to(torch.float32)
        self.net.optimize(z_src_ot.numpy(), z_dst_ot.numpy(), self.rng)
        self.net = self.net.to(self.dtype)
        self._post_load()

    def _post_load(self) -> None:
        """``LearnableOTHook._post_load``: ``quantiles_src`` REPLACED by ``[-1e6, 1e6]`` for
        ``q_all``, else by the named entry viewed ``[1, C]``."""
        if self.quantiles_src == "q_all":
            self.quantiles_src = list(Q_ALL_BOUNDS)
        else:
            self.quantiles_src = copy.deepcopy(self.quantiles_dict_src[self.quantiles_src])
            self.quantiles_src[0] = self.quantiles_src[0].view(1, -1)
            self.quantiles_src[1] = self.quantiles_src[1].view(1, -1)

    def forward(self, module: t.Any, input_: t.Any, output: Tensor) -> Tensor:
        """``LearnableOTHook.forward``: ``[B, T, C]``: support and map on each value;
        ``[B, C, H, W]``: both on the spatial mean ``m``, and every pixel moves by ``T_λ(m) − m``."""
        shape = output.shape
        output_orig = output
        if len(shape) == 4:
            output = output.mean((2, 3)).view(shape[0], 1, shape[1])
        z_unit = output
        ot_mask = ((self.quantiles_src[0] < z_unit) & (z_unit < self.quantiles_src[1])).to(z_unit.dtype)
        z_ot = self.net(z_unit).to(z_unit.dtype)
        z_ot = self.strength * z_ot + (1 - self.strength) * z_unit
        if len(shape) == 4:
            z_ot = z_ot.view(shape[0], -1, 1, 1)
            z_ot = output_orig - output.view(shape[0], -1, 1, 1) + z_ot
            ot_mask = ot_mask.view(shape[0], -1, 1, 1)
        self.last_inside = ot_mask.bool().expand(shape)  # for tests: where the map applies
        return ot_mask * z_ot + (1 - ot_mask) * output_orig


class AURAHook(InterventionHook):
    """act/hooks/aura_hook.py, ``AURAHook``: buffer ``auroc`` ``[C]`` (hook dtype), nothing else saved
    (its ``state_dict`` is ``nn.Module``'s); ``alpha = 1 − 2(auroc − ½)`` where ``auroc > ½``."""

    def __init__(self, module_name: str, strength: float = 1.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(module_name, dtype, strength)
        self.register_buffer("auroc", torch.empty(0))

    def _post_load(self) -> None:
        """``AURAHook._post_load``: the dampening, in the hook dtype."""
        self.alpha = torch.ones_like(self.auroc, dtype=self.dtype)
        mask = self.auroc > 0.5
        self.alpha[mask] = 1 - 2 * (self.auroc[mask] - 0.5)

    def load_state_dict(self, state_dict: t.Mapping[str, t.Any], strict: bool = True, assign: bool = False) -> None:
        """``AURAHook.load_state_dict``."""
        self.auroc = state_dict["auroc"].to(self.dtype)
        self._post_load()

    def fit(self, responses: Tensor, labels: Tensor) -> None:
        """``AURAHook.fit``: AUROC of each channel for the source label."""
        self.auroc = torch.tensor(auroc(responses.detach().cpu().numpy(), labels.detach().cpu().numpy()), dtype=self.dtype)
        self._post_load()

    def forward(self, module: t.Any, input_: t.Any, output: Tensor) -> Tensor:
        """``AURAHook.forward``: every element of channel ``c`` (every pixel, for 4-D) times ``alpha_c``."""
        if output.ndim == 4:
            alpha = self.alpha.view(1, -1, 1, 1)
        elif output.ndim == 3:
            alpha = self.alpha.view(1, 1, -1)
        else:
            raise NotImplementedError("the reference handles 3-D and 4-D outputs")
        self.last_inside = torch.ones(output.shape, dtype=torch.bool)  # for tests: no support
        return (1 - self.strength) * output + self.strength * (output * alpha)


HOOKS: dict[str, t.Callable[..., InterventionHook]] = {  # act/hooks/__init__.py, HOOK_REGISTRY
    "linear_ot": LinearOTHook,
    "gaussian_ot": GaussianOTHook,
    "mean_ot": OnlyMeanHook,
    "aura": AURAHook,
}


def learn_and_save(name: str, module_name: str, responses: Tensor, labels: Tensor, folder: Path, **hook_params: t.Any) -> tuple[InterventionHook, Path]:
    """act/scripts/learn_intervention.py, ``InterventionsManager._learn_intervention``: make the hook,
    ``fit`` it, ``torch.save(hook.state_dict())`` to ``folder / (module_name + ".statedict")`` (the
    module name keeps its ``:i`` output suffix). Returns the fitted hook and the file."""
    hook = HOOKS[name](module_name, **hook_params)
    hook.fit(responses=responses, labels=labels)
    folder.mkdir(exist_ok=True, parents=True)
    path = folder / (module_name + ".statedict")
    hook.save_state_dict(path)
    return hook, path
