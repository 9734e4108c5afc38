"""``fit_lineas``: LinEAS, affine maps on all sites learned jointly end to end (docs/design.md §1).

"End-to-end Learning of Sparse Interventions on Activations to Steer Generation" (NeurIPS 2025):
every site gets a per-channel map ``T(x) = w ⊙ x + b`` initialised at the identity; the maps are
applied at λ = 1 through :func:`act_fast.ops.affine_transport` (whose autograd gives the gradients)
inside the frozen model, and trained so that, at every site, the pooled steered source activations
match the pooled target activations in 1-D Wasserstein distance, channel by channel. A proximal
step after each optimiser step (L1 soft threshold, then group lasso per site) makes the maps
sparse: whole channels and whole sites return exactly to the identity.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from act_fast.integrations import SiteSpec, site_names
from act_fast.maps import AffineMap, SteeringMaps, model_fingerprint
from act_fast.modeling import Batch, Hook, module_device, progress_bar, run_batches
from act_fast.stats.collection import PaddingMask, collect_into, site_rows
from act_fast.stats.pooling import POOLINGS
from act_fast.steering import steer

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class SupportReport:
    """Which maps moved away from the identity (``w ≠ 1`` or ``b ≠ 0``, compared exactly).

    Attributes:
        channels_active, channels_total: over all sites.
        sites_active, sites_total: sites with at least one active channel.
        per_site: site → fraction of its channels that are active.
    """

    channels_active: int
    channels_total: int
    sites_active: int
    sites_total: int
    per_site: dict[str, float]

    @property
    def channel_fraction(self) -> float:
        return self.channels_active / max(self.channels_total, 1)

    @property
    def site_fraction(self) -> float:
        return self.sites_active / max(self.sites_total, 1)

    def __str__(self) -> str:
        return (
            f"support: {self.channels_active}/{self.channels_total} channels ({self.channel_fraction:.1%}), "
            f"{self.sites_active}/{self.sites_total} sites ({self.site_fraction:.1%}) not identity"
        )


def support_report(maps: Mapping[str, AffineMap]) -> SupportReport:
    """The support of ``maps``: which channels and sites are not exactly the identity."""
    active = {site: (m.weight != 1) | (m.bias != 0) for site, m in maps.items()}
    counts = {site: int(a.sum()) for site, a in active.items()}
    return SupportReport(
        channels_active=sum(counts.values()),
        channels_total=sum(a.numel() for a in active.values()),
        sites_active=sum(1 for c in counts.values() if c),
        sites_total=len(active),
        per_site={site: counts[site] / max(a.numel(), 1) for site, a in active.items()},
    )


@dataclass
class LineasMaps(SteeringMaps):
    """:class:`SteeringMaps` fitted by :func:`fit_lineas`, with the training record (not saved to
    map files).

    Attributes:
        losses: the training loss at each step (before that step's update), length ``steps``.
        report: the support of the final maps.
    """

    losses: list[float] = field(default_factory=list)
    report: SupportReport | None = None


def wasserstein2(source: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per-channel squared 1-D Wasserstein-2 distance between two sample sets.

    Args:
        source: ``[N, C]`` samples. target: ``[M, C]`` samples.
        generator: draws the rows kept from the larger set (without replacement) when ``N ≠ M``.

    Returns:
        ``[C]``: ``mean_i (s_(i) − t_(i))²`` over the ``min(N, M)`` sorted samples of each channel.
    """
    n, m = source.shape[0], target.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"wasserstein2 needs samples on both sides, got {n} source and {m} target rows")
    if source.shape[1] != target.shape[1]:
        raise ValueError(f"wasserstein2: source has {source.shape[1]} channels, target {target.shape[1]}")
    k = min(n, m)
    if n > k:
        source = source[torch.randperm(n, generator=generator)[:k].to(source.device)]
    if m > k:
        target = target[torch.randperm(m, generator=generator)[:k].to(target.device)]
    diff = source.sort(dim=0).values - target.sort(dim=0).values.to(source.dtype)
    return diff.square().mean(0)


def _soft_threshold(v: Tensor, tau: float) -> Tensor:
    """``sign(v) · max(|v| − τ, 0)``: exact zeros where ``|v| ≤ τ``."""
    return v.sign() * (v.abs() - tau).clamp_min(0.0)


def _group_shrink(v: Tensor, tau: float) -> Tensor:
    """Group-lasso proximal map ``v · max(0, 1 − τ / ‖v‖)`` (all zeros when ``‖v‖ ≤ τ``)."""
    norm = torch.linalg.vector_norm(v)
    return v * (1.0 - tau / norm.clamp_min(torch.finfo(v.dtype).tiny)).clamp_min(0.0)


@torch.no_grad()
def proximal_step(weight: Tensor, bias: Tensor, lr: float, l1: float, group: float) -> None:
    """In place on one site's ``[C]`` map tensors: soft threshold of ``w − 1`` and ``b`` by
    ``lr · l1``, then the group shrink of ``w − 1`` and of ``b`` (one group each) with threshold
    ``lr · group · √C``."""
    dw, db = weight - 1.0, bias
    if l1 > 0:
        dw, db = _soft_threshold(dw, lr * l1), _soft_threshold(db, lr * l1)
    if group > 0:
        tau = lr * group * math.sqrt(weight.numel())
        dw, db = _group_shrink(dw, tau), _group_shrink(db, tau)
    weight.copy_(dw + 1.0)
    bias.copy_(db)


class _PooledSteered:
    """Forward hooks that pool each site's (already steered) output for the loss."""

    def __init__(self, site_names: Sequence[str], pooling: str) -> None:
        self.site_names = list(site_names)
        self.pooling = pooling
        self.rows: dict[str, Tensor] = {}
        self.padding = PaddingMask()

    def hook(self, site: str) -> Hook:
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            if site in self.rows:
                raise ValueError(f"site {site!r} ran twice in one forward pass; LinEAS needs sites that run once per forward")
            rows, row_mask = site_rows(output, self.padding.mask, self.pooling, site, module)
            self.rows[site] = rows if row_mask is None else rows[row_mask]

        return fn

    def run(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Pooled steered rows of every site for one batch, with autograd (the forward stops after
        the last site)."""
        self.rows = {}
        hooks = {site: self.hook(site) for site in self.site_names}
        run_batches(model, [batch], hooks, stop_after=self.site_names, on_batch=self.padding, grad=True)
        missing = [site for site in self.site_names if site not in self.rows]
        if missing:
            raise ValueError(f"sites {missing} produced no output during the forward pass")
        rows, self.rows = self.rows, {}
        return rows


def _check_args(steps: int, optimizer: str, lr: float, l1: float, group: float, pooling: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    for name, v in (("l1", l1), ("group", group)):
        if not v >= 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")



def _target_rows(model: nn.Module, names: list[str], target: list[Batch], pooling: str) -> dict[str, Tensor]:
    """Pooled target rows per site (collected once, unsteered, exact)."""
    stats = collect_into(model, target, names, pooling=pooling, stop_early=True, stats_kwargs={"exact": True})
    rows = {site: s.samples for site, s in stats.items()}
    for site, r in rows.items():
        if r.shape[0] == 0:
            raise ValueError(f"site {site!r}: the target batches gave no pooled rows (only padding?)")
    return rows


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters with ``requires_grad`` off, restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _optimizer(tensors: list[Tensor], optimizer: str, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser over the map tensors and its cosine decay to 0 over ``steps``."""
    opt: torch.optim.Optimizer = torch.optim.Adam(tensors, lr=lr) if optimizer == "adam" else torch.optim.SGD(tensors, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)


def _loss(rows: dict[str, Tensor], target_rows: dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """Mean over sites of the mean over channels of the per-channel W2² (pooled steered source vs target)."""
    return torch.stack([wasserstein2(rows[s], target_rows[s], generator).mean() for s in target_rows]).mean()


def _check_finite(step: int, loss: Tensor, tensors: list[Tensor], lr: float) -> None:
    finite = torch.stack([torch.isfinite(loss.detach())] + [torch.isfinite(t).all() for t in tensors]).all()
    if not bool(finite):
        raise ValueError(f"fit_lineas diverged at step {step}: the loss or a map is no longer finite; lower lr (now {lr})")


def fit_lineas(
    model: nn.Module,
    source_batches: Iterable[Batch],
    target_batches: Iterable[Batch],
    sites: SiteSpec,
    *,
    steps: int = 1000,
    optimizer: str = "adam",
    lr: float = 1e-3,
    l1: float = 0.0,
    group: float = 0.0,
    pooling: str = "mean",
    seed: int = 0,
    progress: bool | None = None,
) -> LineasMaps:
    """Learns one affine map per site, all sites jointly, through the frozen model (LinEAS).

    Each step takes the next source batch (cycling), runs it with every map active (λ = 1, conv
    features ``[B, C, H, W]`` with the pooled map as in :func:`act_fast.fit`), pools every site and
    minimises the mean over sites of the mean over channels of the squared 1-D Wasserstein
    distance (:func:`wasserstein2`) between the pooled steered source rows and the pooled target
    rows. The target rows are collected once, without intervention. The learning rate follows a
    cosine decay from ``lr`` to 0 over ``steps``; after each optimiser step, with the step's
    learning rate ``lr_t``, :func:`proximal_step` soft-thresholds ``w − 1`` and ``b`` by
    ``lr_t · l1`` and shrinks them as groups (one per site each) with threshold ``lr_t · group · √C``.

    Memory: only the maps (and Adam's two moments: ``6 C`` floats per site) are trained; the model's
    parameters are frozen (``requires_grad`` off during the fit, restored after) so no parameter
    gradients or optimiser state exist for them, and each forward stops after the last site. The
    peak is the model's weights plus what autograd saves for one source batch through the layers
    up to the last site, as in fine-tuning with frozen weights: measured on all-MiniLM-L6-v2 (FFN
    4×C, all 12 post-LayerNorm sites, batch 32×44) 141 MiB, i.e. about 11 hidden states
    ``[B, T, C]`` per transformer layer, where an inference forward holds only a few hidden states
    at a time. It grows linearly with the source batch (and quadratically with T through the
    attention probabilities); use smaller source batches to lower it.

    Args:
        model: a transformers / diffusers model or any ``nn.Module`` taking ``model(**batch)``; run
            in its current mode (call ``.eval()`` first for deterministic layers).
        source_batches, target_batches: iterables of dicts of model inputs (``attention_mask``
            marks padding). About 32 prompts per side suffice. Every source batch should hold as
            many pooled rows as possible: the distance compares ``min(N_source, N_target)`` sorted
            samples, subsampling the larger side at random each step.
        sites: a preset name for :func:`act_fast.sites` or a list of module names. Each must run
            once per forward pass.
        steps: optimiser steps (≥ 1).
        optimizer: ``"adam"`` (default) or ``"sgd"`` (no momentum).
        lr: peak learning rate (> 0).
        l1: L1 weight on ``w − 1`` and ``b`` (≥ 0): single channels return to the identity.
        group: group-lasso weight (≥ 0): whole sites return to the identity.
            Units: with SGD the proximal step is ISTA, so ``l1`` / ``group`` compare with the
            loss gradient (a channel, resp. a site, stays the identity while its gradient, resp.
            the RMS of its gradient, is below them). Adam normalises its steps to about ``lr``
            per channel, so there they compare with ``|m̂ / √v̂| ≤ ~1``: useful values lie in
            ``(0, 1)`` and ``≥ 1`` keeps every map at the identity.
        pooling: ``mean`` / ``last`` / ``max`` / ``min`` per prompt, or ``none`` (every token).
        seed: seeds the subsampling of the larger side.
        progress: a progress bar with the current loss (None: only when stderr is a terminal),
            and the support printed at the end.

    Returns:
        :class:`LineasMaps` (a :class:`SteeringMaps`, ``method="lineas"``, ``support="q_all"``) in
        forward order, on the model's device in float32, with ``.losses`` and ``.report``.
    """
    _check_args(steps, optimizer, lr, l1, group, pooling)
    names = site_names(model, sites)
    source, target = list(source_batches), list(target_batches)
    if not source or not target:
        raise ValueError(f"fit_lineas needs batches on both sides, got {len(source)} source and {len(target)} target batches")
    target_rows = _target_rows(model, names, target, pooling)
    params = {
        site: (torch.ones(r.shape[1], device=r.device, requires_grad=True), torch.zeros(r.shape[1], device=r.device, requires_grad=True))
        for site, r in target_rows.items()
    }
    tensors = [t for pair in params.values() for t in pair]
    opt, schedule = _optimizer(tensors, optimizer, lr, steps)
    generator = torch.Generator().manual_seed(seed)
    pooled = _PooledSteered(names, pooling)
    curve = torch.empty(steps, device=module_device(model))
    order = names
    # The maps are the trained tensors themselves (op mode: gradients reach them through the
    # transport op); the steering hooks run before the pooling hooks registered after them.
    with (
        _frozen(model),
        steer(model, {site: AffineMap(*params[site]) for site in names}, 1.0, mode="op"),
        progress_bar(steps, "fit_lineas", progress, unit="step") as bar,
    ):
        for step in range(steps):
            rows = pooled.run(model, source[step % len(source)])
            order = list(rows)  # hooks fire in forward order
            loss = _loss(rows, target_rows, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr_t = opt.param_groups[0]["lr"]
            opt.step()
            schedule.step()
            if l1 > 0 or group > 0:
                for w, b in params.values():
                    proximal_step(w, b, lr_t, l1, group)
            curve[step] = loss.detach()
            _check_finite(step, loss, tensors, lr)
            bar.update(1)
            if not bar.disable and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix(loss=f"{float(curve[step]):.4g}")
    maps = {site: AffineMap(params[site][0].detach().clone(), params[site][1].detach().clone()) for site in order}
    report = support_report(maps)
    if progress or (progress is None and not bar.disable):
        tqdm.write(f"fit_lineas: loss {float(curve[0]):.4g} -> {float(curve[-1]):.4g} over {steps} steps; {report}")
    model_type, fingerprint = model_fingerprint(model)
    return LineasMaps(
        maps, method="lineas", support="q_all", pooling=pooling, model_type=model_type, model_fingerprint=fingerprint,
        losses=curve.tolist(), report=report,
    )
