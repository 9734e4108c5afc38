"""``ChannelStats``: streaming, mergeable per-channel statistics of one site (DESIGN.md §2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from act_fast.ops.backend import use_triton
from act_fast.ops.stats_reference import HistogramParams, chan_merge, empty_state, merge_moments_, stats_update_ref
from act_fast.stats.exact import SampleQuantiles, sample_auroc, sort_samples
from act_fast.stats.histogram import HistogramQuantiles, cross_moment, histogram_auroc, midpoint_grid

_INT32_MAX = 2**31 - 1
_MAX_ROWS_PER_LAUNCH = 2**30
_MOMENT_KEYS = ("count", "mean", "m2", "vmin", "vmax", "nan", "pos_inf", "neg_inf")
_INT_KEYS = ("count", "nan", "pos_inf", "neg_inf")

Levels = float | Sequence[float] | Tensor


def _normalize_device(device: torch.device | str | None) -> torch.device:
    """``None`` → cpu; a bare ``cuda`` → the current CUDA device, so it compares equal to tensors'."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


class ChannelStats:
    """Per-channel statistics of a stream of ``[rows, C]`` tensors, in memory independent of rows.

    Tracks, per channel: count of finite values, mean and M2 (float64, Chan merge), exact min /
    max, counts of NaN, +Inf and -Inf (these never enter any other statistic), and a log-bucket
    histogram (:mod:`act_fast.ops.stats_reference`) for quantiles, quantile functions, cross
    moments and AUROC. ``update`` runs one fused Triton pass on CUDA (the pure-torch reference
    elsewhere) and never synchronises with the host, so it can sit inside CUDA graphs.

    **Memory** per channel: 64 bytes of moments and counters (8 × 8-byte values) plus 12 bytes
    per histogram bucket (int64 master counts and int32 pending counts the kernel adds to), with
    ``B = 2 · (exp_max - exp_min) · 2^mantissa_bits + 3`` buckets. Defaults (``m = 5``,
    ``[-16, 16)``, ``B = 2051``): 24,676 bytes per channel (101 MB for C = 4096). ``m = 7`` (bf16
    lossless) on the same window: 98,404 bytes per channel. Exact mode adds 4 bytes per channel
    per kept row (float32 samples). An update also allocates ``[P, C]`` partials (40 bytes per
    channel per row chunk ``P``, a few hundred chunks at most) for the duration of the call.

    **CUDA graphs.** ``update`` only launches kernels. The host-side row counters (``rows_seen``
    and the pending-count guard) advance when ``update`` runs, not when a captured graph replays;
    after replays, call :meth:`fold` at least every 2^31 replayed rows.

    Args:
        num_channels: ``C``.
        device: where the state lives; updates must come from the same device.
        mantissa_bits: histogram buckets per binade ``2^m``; quantile relative error ``≤ 2^-m``.
        exp_min, exp_max: exponent window ``[E_lo, E_hi)``: ``|x| < 2^E_lo`` counts as zero,
            ``|x| ≥ 2^E_hi`` goes to the under/overflow buckets.
        exact: also keep the raw rows (for small N, e.g. pooled prompts). Quantiles, quantile
            functions, cross moments and AUROC then use exact order statistics.
    """

    def __init__(
        self,
        num_channels: int,
        device: torch.device | str | None = None,
        *,
        mantissa_bits: int = 5,
        exp_min: int = -16,
        exp_max: int = 16,
        exact: bool = False,
    ) -> None:
        if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        self.params = HistogramParams(mantissa_bits, exp_min, exp_max).validate()
        self.device = _normalize_device(device)
        self.exact = bool(exact)
        c, dev = num_channels, self.device
        self._state: dict[str, Tensor] = empty_state(c, self.params, dev)
        self._hist = torch.zeros((c, self.params.num_buckets), dtype=torch.int64, device=dev)
        self._pending_rows = 0
        self.rows_seen = 0
        self._samples: list[tuple[Tensor, Tensor | None]] = []

    # ------------------------------------------------------------------ update
    def update(self, x: Tensor, row_mask: Tensor | None = None) -> "ChannelStats":
        """Adds the rows of ``x`` (``[rows, C]``, float32 / bfloat16 / float16 / float64).

        ``row_mask`` (``[rows]`` bool, optional) drops rows where it is False, without a host
        synchronisation (padding tokens). Float64 input runs the float64 reference; bucketing
        always uses the value rounded to float32. Returns ``self``.
        """
        self._check_rows(x, row_mask)
        x = x.detach()
        for start in range(0, x.shape[0], _MAX_ROWS_PER_LAUNCH):
            xs = x[start : start + _MAX_ROWS_PER_LAUNCH]
            ms = None if row_mask is None else row_mask[start : start + _MAX_ROWS_PER_LAUNCH]
            # Decided from shapes only: the int32 pending counts can never overflow.
            if self._pending_rows + xs.shape[0] > _INT32_MAX:
                self.fold()
            if x.dtype != torch.float64 and use_triton(xs):
                from act_fast.ops.stats import stats_update_triton

                stats_update_triton(xs, self._state, self.params, ms)
            else:
                with torch.no_grad():
                    stats_update_ref(xs, self._state, self.params, ms)
            self._pending_rows += xs.shape[0]
        self.rows_seen += x.shape[0]
        if self.exact and x.shape[0]:
            mask = None if row_mask is None else row_mask.detach().to(torch.bool, copy=True)
            self._samples.append((x.detach().to(torch.float32, copy=True), mask))
        return self

    def _check_rows(self, x: Tensor, row_mask: Tensor | None) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"ChannelStats.update expects a torch.Tensor [rows, {self.num_channels}], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"ChannelStats.update expects a floating-point tensor (float32, bfloat16, float16, float64), got {x.dtype}")
        if x.ndim != 2:
            raise ValueError(
                f"ChannelStats.update expects a 2-D tensor [rows, {self.num_channels}], got shape {list(x.shape)}; "
                f"flatten leading dims with x.reshape(-1, {self.num_channels})"
            )
        if x.shape[1] != self.num_channels:
            raise ValueError(f"ChannelStats.update expects {self.num_channels} channels, got {x.shape[1]} (x shape {list(x.shape)})")
        if x.device != self.device:
            raise ValueError(f"ChannelStats lives on {self.device} but x is on {x.device}")
        if row_mask is not None:
            if not isinstance(row_mask, Tensor) or row_mask.dtype != torch.bool:
                got = row_mask.dtype if isinstance(row_mask, Tensor) else type(row_mask).__name__
                raise TypeError(f"row_mask must be a bool tensor [{x.shape[0]}], got {got}")
            if row_mask.shape != (x.shape[0],):
                raise ValueError(f"row_mask must have shape [{x.shape[0]}] (one flag per row of x), got {list(row_mask.shape)}")
            if row_mask.device != x.device:
                raise ValueError(f"row_mask is on {row_mask.device} but x is on {x.device}")

    def fold(self) -> None:
        """Moves the int32 pending histogram counts into the int64 master histogram (queries,
        merges and serialisation do this themselves, unconditionally, so counts added by CUDA-graph
        replays are never missed)."""
        self._hist += self._state["hist"]
        self._state["hist"].zero_()
        self._pending_rows = 0

    # ------------------------------------------------------------------ raw state
    @property
    def histogram(self) -> Tensor:
        """int64 ``[C, B]`` bucket counts (layout in :mod:`act_fast.ops.stats_reference`)."""
        self.fold()
        return self._hist.clone()

    @property
    def samples(self) -> Tensor:
        """Exact mode: the kept rows, float32 ``[N, C]`` (masked rows removed, non-finite kept)."""
        if not self.exact:
            raise ValueError("samples are only kept in exact mode; build ChannelStats(..., exact=True)")
        if len(self._samples) != 1 or self._samples[0][1] is not None:
            rows = [x if m is None else x[m] for x, m in self._samples]
            merged = torch.cat(rows) if rows else torch.zeros((0, self.num_channels), device=self.device)
            self._samples = [(merged, None)]
        return self._samples[0][0]

    # ------------------------------------------------------------------ moments
    def _nonempty(self) -> Tensor:
        count = self._state["count"]
        if self.rows_seen == 0 or not bool((count > 0).any()):
            raise ValueError(
                f"ChannelStats is empty: {self.rows_seen} rows seen and no finite value in any of the "
                f"{self.num_channels} channels; call update() with data first"
            )
        return count > 0

    @property
    def count(self) -> Tensor:
        """int64 ``[C]``: finite values seen per channel."""
        return self._state["count"].clone()

    @property
    def nan_count(self) -> Tensor:
        """int64 ``[C]``: NaN values seen per channel."""
        return self._state["nan"].clone()

    @property
    def pos_inf_count(self) -> Tensor:
        """int64 ``[C]``: +Inf values seen per channel."""
        return self._state["pos_inf"].clone()

    @property
    def neg_inf_count(self) -> Tensor:
        """int64 ``[C]``: -Inf values seen per channel."""
        return self._state["neg_inf"].clone()

    @property
    def mean(self) -> Tensor:
        """float64 ``[C]``; NaN for a channel without finite values."""
        return torch.where(self._nonempty(), self._state["mean"], math.nan)

    def var(self, unbiased: bool = False) -> Tensor:
        """float64 ``[C]``: population (``M2 / n``) or unbiased (``M2 / (n - 1)``) variance; NaN
        where the channel has too few values."""
        self._nonempty()
        n = self._state["count"] - int(bool(unbiased))
        return torch.where(n > 0, self._state["m2"] / n.clamp_min(1).to(torch.float64), math.nan)

    def std(self, unbiased: bool = False) -> Tensor:
        """float64 ``[C]``: square root of :meth:`var`."""
        return self.var(unbiased).sqrt()

    @property
    def min(self) -> Tensor:
        """float64 ``[C]``: exact minimum of the finite values; NaN for an empty channel."""
        return torch.where(self._nonempty(), self._state["vmin"], math.nan)

    @property
    def max(self) -> Tensor:
        """float64 ``[C]``: exact maximum of the finite values; NaN for an empty channel."""
        return torch.where(self._nonempty(), self._state["vmax"], math.nan)

    # ------------------------------------------------------------------ quantiles
    def _levels(self, q: Levels) -> tuple[Tensor, bool]:
        """Validated levels as float64 ``[P]`` on the state's device, and whether ``q`` was scalar."""
        scalar = isinstance(q, (int, float)) and not isinstance(q, bool)
        levels = torch.as_tensor(q, dtype=torch.float64).to(self.device).reshape(-1)
        if isinstance(q, Tensor) and q.ndim > 1:
            raise ValueError(f"quantile levels must be a float or a 1-D tensor, got shape {list(q.shape)}")
        bad = torch.isnan(levels) | (levels < 0) | (levels > 1)
        if bool(bad.any()):
            raise ValueError(f"quantile levels must lie in [0, 1], got {levels[bad][:8].tolist()}")
        return levels, scalar

    def quantile_fn(self) -> HistogramQuantiles | SampleQuantiles:
        """The per-channel quantile function used by the queries below: exact order statistics in
        exact mode, else the histogram's (see :mod:`act_fast.stats.histogram`)."""
        self._nonempty()
        if self.exact:
            return SampleQuantiles(*sort_samples(self.samples))
        self.fold()
        return HistogramQuantiles(self._hist, self._state["vmin"], self._state["vmax"], self.params)

    def quantile(self, q: Levels, interpolate: bool = True) -> Tensor:
        """Per-channel quantiles at level(s) ``q`` in ``[0, 1]``.

        Histogram mode: the generalised inverse CDF interpolated inside its bucket (relative error
        ``≤ 2^-mantissa_bits``; ``interpolate=False`` gives the bucket edge nearest zero). Exact
        mode: ``torch.quantile`` semantics (``interpolate=False``: the order statistic ``x_(⌈qn⌉)``).

        Returns:
            float64 ``[C]`` for a float ``q``, ``[len(q), C]`` for a sequence or 1-D tensor.
        """
        levels, scalar = self._levels(q)
        qf = self.quantile_fn()
        u = levels[None, :].expand(self.num_channels, -1)
        if isinstance(qf, SampleQuantiles):
            out = qf.linear(u) if interpolate else qf.at(u)
        else:
            out = qf.at(u, interpolate=interpolate)
        out = out.t().contiguous()
        return out[0] if scalar else out

    def quantile_bounds(self, q: Levels) -> tuple[Tensor, Tensor]:
        """Histogram bucket ``[lo, hi]`` holding the quantile at level(s) ``q`` (shapes as
        :meth:`quantile`); the true order statistic of rank ``⌈q·N⌉`` lies inside it."""
        levels, scalar = self._levels(q)
        self._nonempty()
        self.fold()
        hq = HistogramQuantiles(self._hist, self._state["vmin"], self._state["vmax"], self.params)
        lo, hi = hq.bucket(levels[None, :].expand(self.num_channels, -1))
        lo, hi = lo.t().contiguous(), hi.t().contiguous()
        return (lo[0], hi[0]) if scalar else (lo, hi)

    def quantile_function(self, num_points: int = 256) -> Tensor:
        """The quantile function (generalised inverse CDF) on the midpoint grid
        ``u_j = (j + 0.5) / num_points`` (:func:`act_fast.stats.histogram.midpoint_grid`):
        float64 ``[num_points, C]``."""
        u = midpoint_grid(num_points, self.device)
        return self.quantile_fn().at(u[None, :].expand(self.num_channels, -1)).t().contiguous()

    def cross_moment(self, other: "ChannelStats") -> Tensor:
        """``E[Q_self(U) Q_other(U)]``, ``U ~ Uniform(0, 1)`` (the quantile coupling), float64 ``[C]``.

        In exact mode with equal counts this is the mean of products of the sorted samples.
        """
        self._check_channels(other, "cross_moment")
        self._check_device(other, "cross_moment")
        return cross_moment(self.quantile_fn(), other.quantile_fn())

    def auroc(self, other: "ChannelStats") -> Tensor:
        """Per-channel AUROC of separating ``self`` (positive) from ``other``: ``P(X > Y) + ½ P(X = Y)``,
        float64 ``[C]``. Exact when both sides are exact; else from histograms (values sharing a
        bucket count as ties), which needs equal histogram parameters."""
        self._check_channels(other, "auroc")
        self._check_device(other, "auroc")
        self._nonempty()
        other._nonempty()
        if self.exact and other.exact:
            return sample_auroc(self.quantile_fn(), other.quantile_fn())  # type: ignore[arg-type]
        self._check_params(other, "auroc")
        return histogram_auroc(self.histogram, other.histogram)

    # ------------------------------------------------------------------ merging
    def _check_channels(self, other: object, what: str) -> None:
        if not isinstance(other, ChannelStats):
            raise TypeError(f"{what} expects a ChannelStats, got {type(other).__name__}")
        if other.num_channels != self.num_channels:
            raise ValueError(f"{what}: channel counts differ, expected {self.num_channels}, got {other.num_channels}")

    def _check_device(self, other: "ChannelStats", what: str) -> None:
        if other.device != self.device:
            raise ValueError(f"{what}: both ChannelStats must live on one device, got {self.device} and {other.device}")

    def _check_params(self, other: "ChannelStats", what: str) -> None:
        if other.params != self.params:
            raise ValueError(
                f"{what}: histogram parameters differ, expected {tuple(self.params)} "
                f"(mantissa_bits, exp_min, exp_max), got {tuple(other.params)}"
            )

    def merge(self, other: "ChannelStats") -> "ChannelStats":
        """Adds ``other``'s statistics to ``self`` in place (exact for counts and histograms, Chan
        merge for moments). Refuses other channel counts, histogram parameters or exact flags.
        Returns ``self``."""
        self._check_channels(other, "merge")
        self._check_params(other, "merge")
        if other.exact != self.exact:
            raise ValueError(f"merge: exact mode differs, expected exact={self.exact}, got exact={other.exact}")
        merge_moments_(self._state, {k: v.to(self.device) for k, v in other._state.items()})
        self.fold()
        self._hist += other.histogram.to(self.device)
        self.rows_seen += other.rows_seen
        if self.exact:
            self._samples.append((other.samples.to(self.device), None))
        return self

    def all_reduce(self, group: object = None) -> "ChannelStats":
        """Merges the state of every rank of ``group`` (``torch.distributed``) into every rank, in
        place. Counts and histograms are summed exactly (``all_reduce(SUM)``); moments are
        Chan-merged in rank order; exact-mode samples are gathered in rank order. Returns ``self``.
        A collective: every rank must call it."""
        import torch.distributed as dist

        self.fold()
        s = self._state
        ints = torch.cat([s[k] for k in _INT_KEYS] + [self._hist.reshape(-1)])
        dist.all_reduce(ints, op=dist.ReduceOp.SUM, group=group)
        # Moments: gather every rank's (n, mean, M2) and Chan-merge them in rank order, so all
        # ranks hold the same float64 result as a sequential merge of the rank states.
        local = torch.stack([s["count"].to(torch.float64), s["mean"], s["m2"]])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        n, mean, m2 = gathered[0][0], gathered[0][1], gathered[0][2]
        for g in gathered[1:]:
            n, mean, m2 = chan_merge(n, mean, m2, g[0], g[1], g[2])
        dist.all_reduce(s["vmin"], op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(s["vmax"], op=dist.ReduceOp.MAX, group=group)
        c = self.num_channels
        for i, key in enumerate(_INT_KEYS):
            s[key].copy_(ints[i * c : (i + 1) * c])
        s["mean"].copy_(mean)
        s["m2"].copy_(m2)
        self._hist.copy_(ints[len(_INT_KEYS) * c :].reshape(self._hist.shape))
        rows = torch.tensor([self.rows_seen], dtype=torch.int64, device=self.device)
        dist.all_reduce(rows, op=dist.ReduceOp.SUM, group=group)
        self.rows_seen = int(rows)
        if self.exact:
            self._samples = [(self._gather_samples(group), None)]
        return self

    def _gather_samples(self, group: object) -> Tensor:
        import torch.distributed as dist

        local = self.samples
        world = dist.get_world_size(group)
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=self.device), group=group)
        counts = [int(t) for t in sizes]
        padded = torch.zeros((max(counts), self.num_channels), dtype=local.dtype, device=self.device)
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        return torch.cat([g[:k] for g, k in zip(gathered, counts)])

    # ------------------------------------------------------------------ serialisation
    def state_dict(self) -> dict[str, Tensor]:
        """All state as tensors (safetensors-friendly): moments, counters, int64 ``hist``,
        ``params`` (int64 ``[mantissa_bits, exp_min, exp_max]``), ``rows_seen``, ``exact`` and, in
        exact mode, ``samples``."""
        self.fold()
        sd = {k: self._state[k].clone() for k in _MOMENT_KEYS}
        sd["hist"] = self._hist.clone()
        sd["params"] = torch.tensor(tuple(self.params), dtype=torch.int64)
        sd["rows_seen"] = torch.tensor(self.rows_seen, dtype=torch.int64)
        sd["exact"] = torch.tensor(self.exact)
        if self.exact:
            sd["samples"] = self.samples.clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Tensor]) -> "ChannelStats":
        """Replaces the state with ``state_dict`` (from :meth:`state_dict`); refuses a different
        channel count, histogram parameters or exact flag. Returns ``self``."""
        required = set(_MOMENT_KEYS) | {"hist", "params", "rows_seen", "exact"}
        missing = required - set(state_dict)
        if missing:
            raise ValueError(f"ChannelStats state_dict is missing keys {sorted(missing)}")
        params = HistogramParams(*(int(v) for v in state_dict["params"].tolist()))
        if params != self.params:
            raise ValueError(f"state_dict histogram parameters {tuple(params)} differ from this ChannelStats' {tuple(self.params)}")
        if bool(state_dict["exact"]) != self.exact:
            raise ValueError(f"state_dict has exact={bool(state_dict['exact'])}, this ChannelStats has exact={self.exact}")
        for key in _MOMENT_KEYS:
            if tuple(state_dict[key].shape) != (self.num_channels,):
                raise ValueError(f"state_dict[{key!r}] must have shape [{self.num_channels}], got {list(state_dict[key].shape)}")
        if tuple(state_dict["hist"].shape) != tuple(self._hist.shape):
            raise ValueError(f"state_dict['hist'] must have shape {list(self._hist.shape)}, got {list(state_dict['hist'].shape)}")
        for key in _MOMENT_KEYS:
            self._state[key].copy_(state_dict[key])
        self._hist.copy_(state_dict["hist"])
        self._state["hist"].zero_()
        self._pending_rows = 0
        self.rows_seen = int(state_dict["rows_seen"])
        if self.exact:
            samples = state_dict.get("samples")
            if samples is None or samples.ndim != 2 or samples.shape[1] != self.num_channels:
                got = None if samples is None else list(samples.shape)
                raise ValueError(f"exact-mode state_dict needs 'samples' of shape [N, {self.num_channels}], got {got}")
            self._samples = [(samples.to(self.device, torch.float32), None)]
        return self

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor], device: torch.device | str | None = None) -> "ChannelStats":
        """A new ChannelStats holding ``state_dict`` (parameters read from it)."""
        m, lo, hi = (int(v) for v in state_dict["params"].tolist())
        stats = cls(int(state_dict["count"].shape[0]), device, mantissa_bits=m, exp_min=lo, exp_max=hi, exact=bool(state_dict["exact"]))
        return stats.load_state_dict(state_dict)

    def __repr__(self) -> str:
        m, lo, hi = self.params
        mode = ", exact" if self.exact else ""
        return f"ChannelStats(num_channels={self.num_channels}, rows_seen={self.rows_seen}, mantissa_bits={m}, exp=[{lo}, {hi}){mode}, device={self.device})"
