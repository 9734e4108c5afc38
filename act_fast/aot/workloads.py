"""The representative public-op calls whose Triton launches the AOT compile check records.

Each :class:`Workload` calls one public op (``affine_transport``, ``rms_norm_transport``,
``layer_norm_transport``, ``group_norm_transport``, ``ChannelStats.update``) on tensors built
from shapes alone (``torch.empty``; maps are ones and zeros, which pass the ops' finiteness
checks). Recording runs them with launches skipped, so production shapes cost nothing.

Two kinds:
- **production** (all ``hot``: bulk tensors must move in 16-byte accesses): contiguous ``[8192, 4096]``
  rows, ``[32, 1, 4096]`` decode steps, C = 8192 / 16384 norms, SDXL-sized conv features, the
  statistics update at ``[8192, 4096]``. Steering passes λ as a 0-d (or ``[B]``) float32
  tensor, float32 maps and an int32 map index (:mod:`act_fast.steer`), and so do these.
- **coverage**: small odd shapes for each mode the kernels branch on (dtype, support, λ scalar /
  0-d / per row / per map, map index none / 0-d / per row / chain ``[B, S]``, pooled / unpooled planes, multi-tile planes,
  chunked wide norm rows, strided input, row mask, float64).

Names are stable test ids (the AOT test's expected failures are keyed by them).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from act_fast.ops import affine_transport, group_norm_transport, layer_norm_transport, rms_norm_transport

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}


@dataclass(frozen=True)
class Workload:
    """One op call. ``build(device)`` returns ``(bulk input, thunk making the call)``; with
    ``hot`` the compiled code must stream the bulk tensors with 16-byte accesses."""

    name: str
    build: Callable[[torch.device], tuple[Tensor, Callable[[], Any]]]
    hot: bool = False


def _maps(C: int, K: int | None, support: bool, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    shape = (C,) if K is None else (K, C)
    w, b = torch.ones(shape, device=device), torch.zeros(shape, device=device)
    if not support:
        return w, b, None, None
    return w, b, torch.full(shape, -1.0, device=device), torch.full(shape, 1.0, device=device)


def _strength(kind: str, B: int, device: torch.device, maps: str = "none") -> float | Tensor:
    if kind == "scalar":
        return 0.5
    if kind == "0d":
        return torch.tensor(0.5, device=device)
    if kind == "map":  # one λ per map of a chain: [B, S]
        return torch.full((B, _chain_length(maps)), 0.5, device=device)
    assert kind == "row", kind
    return torch.full((B,), 0.5, device=device)


def _chain_length(maps: str) -> int:
    """S of a ``chainS`` map-index kind (a ``[B, S]`` index: each row composes S maps)."""
    assert maps.startswith("chain"), maps
    return int(maps[len("chain"):])


def _map_index(kind: str, B: int, K: int, device: torch.device) -> Tensor | None:
    if kind == "none":
        return None
    if kind == "0d":
        return torch.tensor(1, dtype=torch.int32, device=device)
    if kind.startswith("chain"):
        S = _chain_length(kind)
        return (torch.arange(B * S, dtype=torch.int32, device=device) % K).reshape(B, S)
    assert kind == "row", kind
    return torch.arange(B, dtype=torch.int32, device=device) % K


def transport(shape, dtype="bf16", *, support=True, lam="0d", maps="none", channel_dim=-1, pool=False, strided=False):
    """``affine_transport`` on ``x`` of ``shape`` (``strided``: every other channel of a 2× wider
    tensor, so the channel stride is 2)."""

    def build(device):
        if strided:
            base = torch.empty(*shape[:-1], 2 * shape[-1], dtype=_DTYPES[dtype], device=device)
            x = base[..., ::2]
        else:
            x = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
        C = x.shape[channel_dim]
        K = None if maps == "none" else 4
        w, b, lo, hi = _maps(C, K, support, device)
        s = _strength(lam, x.shape[0], device, maps)
        idx = _map_index(maps, x.shape[0], 4, device)
        kw = {"pool_spatial": pool} if channel_dim == 1 else {}
        return x, lambda: affine_transport(x, w, b, s, lo, hi, channel_dim=channel_dim, map_index=idx, **kw)

    return build


def _norm_kwargs(cast_before_scale: bool | None) -> dict:
    return {} if cast_before_scale is None else {"cast_before_scale": cast_before_scale}


def norm(shape, dtype="bf16", *, kind="rms", affine=True, support=True, lam="0d", maps="none", cast_before_scale=None):
    """``rms_norm_transport`` / ``layer_norm_transport`` over the last dim of ``shape``."""

    def build(device):
        x = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
        C = shape[-1]
        K = None if maps == "none" else 4
        w, b, lo, hi = _maps(C, K, support, device)
        s = _strength(lam, shape[0], device, maps)
        idx = _map_index(maps, shape[0], 4, device)
        nw = torch.ones(C, dtype=x.dtype, device=device) if affine else None
        nb = torch.zeros(C, dtype=x.dtype, device=device) if affine else None
        if kind == "rms":
            extra = _norm_kwargs(cast_before_scale)
            return x, lambda: rms_norm_transport(x, nw, w, b, s, lo, hi, map_index=idx, **extra)
        extra = _norm_kwargs(cast_before_scale)
        return x, lambda: layer_norm_transport(x, nw, nb, w, b, s, lo, hi, map_index=idx, **extra)

    return build


def group_norm(shape, dtype="bf16", *, groups=32, support=True, lam="0d", maps="none", pool=True):
    """``group_norm_transport`` on conv features ``[B, C, H, W]``."""

    def build(device):
        x = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
        C = shape[1]
        K = None if maps == "none" else 4
        w, b, lo, hi = _maps(C, K, support, device)
        s = _strength(lam, shape[0], device)
        idx = _map_index(maps, shape[0], 4, device)
        nw, nb = torch.ones(C, dtype=x.dtype, device=device), torch.zeros(C, dtype=x.dtype, device=device)
        return x, lambda: group_norm_transport(x, groups, nw, nb, w, b, s, lo, hi, pool_spatial=pool, map_index=idx)

    return build


def stats(shape, dtype="bf16", *, row_mask=False):
    """``ChannelStats.update`` with the default histogram parameters."""

    def build(device):
        from act_fast.stats import ChannelStats

        from act_fast.ops.stats import forced_layout, nvidia_layout

        x = torch.empty(shape, dtype=_DTYPES[dtype], device=device)
        cs = ChannelStats(shape[1], device=device)
        mask = torch.ones(shape[0], dtype=torch.bool, device=device) if row_mask else None

        def update():
            # The layout an NVIDIA GPU runs (shared memory), also when recorded on a CPU.
            with forced_layout(nvidia_layout(cs.params)):
                cs.update(x, mask)

        return x, update

    return build


ROWS = (8192, 4096)
DECODE = (32, 1, 4096)
PREFILL = (4, 512, 4096)
SDXL = (2, 320, 64, 64)

WORKLOADS: list[Workload] = [
    # --- production: transport rows (op mode: o_proj / attention / MLP outputs)
    Workload("transport-rows-bf16-8192x4096", transport(ROWS, "bf16"), hot=True),
    Workload("transport-rows-fp16-8192x4096", transport(ROWS, "fp16"), hot=True),
    Workload("transport-rows-fp32-8192x4096", transport(ROWS, "fp32"), hot=True),
    Workload("transport-rows-bf16-8192x4096-nosupport-scalar", transport(ROWS, "bf16", support=False, lam="scalar"), hot=True),
    Workload("transport-rows-bf16-prefill-4x512x4096", transport(PREFILL, "bf16"), hot=True),
    Workload("transport-rows-bf16-decode-32x1x4096-rowlam-rowmap", transport(DECODE, "bf16", lam="row", maps="row"), hot=True),
    Workload("transport-rows-bf16-decode-32x1x4096-map0d", transport(DECODE, "bf16", maps="0d"), hot=True),
    # composition: a chain of S maps per row ([B, S] map_index and λ), as steering and vLLM pass it
    Workload("transport-rows-bf16-decode-32x1x4096-chain2", transport(DECODE, "bf16", lam="map", maps="chain2"), hot=True),
    Workload("transport-rows-bf16-decode-32x1x4096-chain4", transport(DECODE, "bf16", lam="map", maps="chain4"), hot=True),
    Workload("transport-rows-bf16-8192x4096-chain4-nosupport", transport(ROWS, "bf16", support=False, lam="map", maps="chain4"), hot=True),
    # --- production: fused norm + transport
    Workload("rmsnorm-bf16-8192x4096", norm(ROWS, "bf16"), hot=True),
    Workload("rmsnorm-fp16-8192x4096", norm(ROWS, "fp16"), hot=True),
    Workload("rmsnorm-fp32-8192x4096", norm(ROWS, "fp32"), hot=True),
    Workload("layernorm-bf16-8192x4096", norm(ROWS, "bf16", kind="layer"), hot=True),
    Workload("rmsnorm-bf16-decode-32x1x4096-rowlam-rowmap", norm(DECODE, "bf16", lam="row", maps="row"), hot=True),
    Workload("rmsnorm-bf16-decode-32x1x4096-chain2", norm(DECODE, "bf16", lam="map", maps="chain2"), hot=True),
    Workload("rmsnorm-bf16-decode-32x1x4096-chain4", norm(DECODE, "bf16", lam="map", maps="chain4"), hot=True),
    Workload("rmsnorm-bf16-8192x4096-chain4", norm(ROWS, "bf16", lam="map", maps="chain4"), hot=True),
    Workload("rmsnorm-bf16-2048x8192", norm((2048, 8192), "bf16"), hot=True),
    Workload("rmsnorm-bf16-1024x16384", norm((1024, 16384), "bf16"), hot=True),
    # --- production: diffusion (conv features)
    Workload("transport-planes-bf16-sdxl-pooled", transport(SDXL, "bf16", channel_dim=1, pool=True), hot=True),
    Workload("transport-planes-fp16-sdxl-unpooled", transport(SDXL, "fp16", channel_dim=1, pool=False), hot=True),
    Workload("groupnorm-fp16-sdxl-pooled", group_norm(SDXL, "fp16"), hot=True),
    Workload("groupnorm-bf16-2x1280x32x32-unpooled", group_norm((2, 1280, 32, 32), "bf16", pool=False), hot=True),
    # --- production: statistics collection
    Workload("stats-bf16-8192x4096", stats(ROWS, "bf16"), hot=True),
    Workload("stats-fp16-8192x4096", stats(ROWS, "fp16"), hot=True),
    Workload("stats-fp32-8192x4096", stats(ROWS, "fp32"), hot=True),
    Workload("stats-bf16-8192x4096-rowmask", stats(ROWS, "bf16", row_mask=True), hot=True),
    # --- coverage: odd shapes and every mode
    Workload("transport-rows-fp32-odd-scalar", transport((7, 37), "fp32", lam="scalar")),
    Workload("transport-rows-fp16-odd-rowlam-nosupport", transport((5, 3, 37), "fp16", support=False, lam="row")),
    Workload("transport-rows-bf16-odd-rowmap", transport((5, 3, 37), "bf16", lam="row", maps="row")),
    Workload("transport-rows-bf16-odd-map0d", transport((5, 37), "bf16", maps="0d")),
    Workload("transport-rows-bf16-strided", transport((64, 256), "bf16", strided=True)),
    Workload("transport-rows-fp64-odd", transport((7, 37), "fp64", lam="row", maps="row")),
    Workload("transport-rows-fp64-12x100-rowmap", transport((4, 3, 100), "fp64", maps="row")),
    Workload("transport-planes-fp32-odd-pooled-rowmap", transport((3, 5, 7, 9), "fp32", channel_dim=1, pool=True, lam="row", maps="row")),
    Workload("transport-planes-bf16-multitile-unpooled", transport((1, 3, 160, 160), "bf16", channel_dim=1, lam="scalar", support=False)),
    Workload("transport-planes-fp64-odd", transport((2, 3, 5, 5), "fp64", channel_dim=1, pool=False)),
    Workload("rmsnorm-bf16-odd-noaffine-scalar", norm((7, 37), "bf16", affine=False, lam="scalar", support=False)),
    Workload("rmsnorm-fp32-odd-map0d", norm((5, 37), "fp32", maps="0d")),
    Workload("rmsnorm-bf16-5x7x24-rowlam", norm((5, 7, 24), "bf16", lam="row")),
    Workload("layernorm-fp16-odd-rowlam-rowmap", norm((5, 3, 37), "fp16", kind="layer", lam="row", maps="row")),
    Workload("transport-rows-fp32-odd-chain3-rowlam", transport((5, 3, 37), "fp32", lam="row", maps="chain3")),
    Workload("transport-rows-fp64-odd-chain2", transport((7, 37), "fp64", lam="map", maps="chain2")),
    Workload("layernorm-fp16-odd-chain3", norm((5, 3, 37), "fp16", kind="layer", lam="map", maps="chain3")),
    Workload("rmsnorm-bf16-chunked-3x20000-chain2", norm((3, 20000), "bf16", lam="map", maps="chain2")),
    Workload("rmsnorm-bf16-chunked-3x20000", norm((3, 20000), "bf16")),
    Workload("layernorm-fp32-chunked-3x20000", norm((3, 20000), "fp32", kind="layer")),
    Workload("rmsnorm-fp64-odd", norm((5, 37), "fp64")),
    Workload("groupnorm-fp32-odd-rowlam-rowmap", group_norm((3, 6, 5, 7), "fp32", groups=3, lam="row", maps="row")),
    Workload("groupnorm-bf16-multitile", group_norm((1, 4, 160, 160), "bf16", groups=2, pool=False)),
    Workload("stats-fp32-odd", stats((37, 100), "fp32")),
    Workload("stats-bf16-odd-rowmask", stats((37, 100), "bf16", row_mask=True)),
]

# The norm ops' ``cast_before_scale`` (the model's rounding order) is being added; once it is
# there, its constexpr mode is recorded too.
if "cast_before_scale" in inspect.signature(rms_norm_transport).parameters:
    WORKLOADS += [
        Workload("rmsnorm-bf16-8192x4096-cast-before-scale", norm(ROWS, "bf16", cast_before_scale=True), hot=True),
        Workload("rmsnorm-bf16-8192x4096-scale-before-cast", norm(ROWS, "bf16", cast_before_scale=False), hot=True),
    ]
if "cast_before_scale" in inspect.signature(layer_norm_transport).parameters:
    WORKLOADS += [
        Workload("layernorm-bf16-8192x4096-cast-before-scale", norm(ROWS, "bf16", kind="layer", cast_before_scale=True), hot=True),
    ]
