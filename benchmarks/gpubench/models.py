"""Models with random weights built from configs (no downloads), their inputs, and random maps.

- Llama-3-8B shapes: hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 KV heads, vocab
  128256 (16 GB in bf16). ``--smoke`` uses a 2-layer hidden-64 model of the same class.
- SDXL UNet shapes (the SDXL base config: 320/640/1280 channels, transformer depth 1/2/10,
  cross-attention 2048, text_time conditioning), 1024 px (128×128 latents), batch 2 (CFG).
- FLUX.1 transformer shapes (19 double + 38 single blocks, 24 heads × 128, joint dim 4096),
  1024 px (4096 image tokens), 512 text tokens, batch 1, guidance embedding.

Maps are random and built directly as :class:`act_fast.SteeringMaps`:

- ``fold`` maps: weight ``1 + 0.05·N(0,1)``, bias 0, no support: foldable into a bias-free
  RMSNorm (Llama) or linear;
- ``support`` maps: weight ``1 + 0.1·N(0,1)``, bias ``0.1·N(0,1)``, support
  ``lo = −(2 + U)``, ``hi = 2 + U`` (a ``q_0_100``-like range around normed activations), so
  ``fold`` does not apply and the fused / op paths run with their support masks.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

import act_fast as af

LLAMA3_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
LLAMA_SMOKE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=256, max_position_embeddings=512, rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
SDXL_SMOKE = dict(
    sample_size=16, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=64,
    norm_num_groups=8,
)
# text_embeds width = projection_class_embeddings_input_dim - 6 * addition_time_embed_dim
SDXL_TEXT = {"full": (77, 2048, 1280), "smoke": (7, 32, 16)}  # (tokens, cross dim, pooled text width)

FLUX = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_SMOKE = dict(
    patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _build(factory, device: str, dtype: torch.dtype) -> nn.Module:
    """Builds directly on ``device`` in ``dtype`` (random init on the GPU: seconds, not minutes)."""
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype), torch.no_grad():
        model = factory()
    wrong = {p.dtype for p in model.parameters() if p.dtype != dtype}
    if wrong:  # built under the default dtype already; only cast when something was not
        model = model.to(dtype=dtype)
    return model.eval().requires_grad_(False)


def llama(device: str, dtype: torch.dtype, smoke: bool, layers: int | None = None) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(LLAMA_SMOKE if smoke else LLAMA3_8B)
    if layers:
        cfg["num_hidden_layers"] = layers
    config = LlamaConfig(**cfg)
    config._attn_implementation = "sdpa"
    return _build(lambda: LlamaForCausalLM(config), device, dtype)


def sdxl_unet(device: str, dtype: torch.dtype, smoke: bool) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return _build(lambda: UNet2DConditionModel(**(SDXL_SMOKE if smoke else SDXL_UNET)), device, dtype)


def sdxl_inputs(device: str, dtype: torch.dtype, smoke: bool, batch: int = 2) -> dict[str, Any]:
    cfg = SDXL_SMOKE if smoke else SDXL_UNET
    tokens, cross, pooled = SDXL_TEXT["smoke" if smoke else "full"]
    side = cfg["sample_size"]
    g = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    return {
        "sample": rand(batch, 4, side, side),
        "timestep": torch.tensor(500.0, device=device),
        "encoder_hidden_states": rand(batch, tokens, cross),
        "added_cond_kwargs": {"text_embeds": rand(batch, pooled), "time_ids": rand(batch, 6)},
    }


def flux(device: str, dtype: torch.dtype, smoke: bool, layers: tuple[int, int] | None = None) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    cfg = dict(FLUX_SMOKE if smoke else FLUX)
    if layers:
        cfg["num_layers"], cfg["num_single_layers"] = layers
    return _build(lambda: FluxTransformer2DModel(**cfg), device, dtype)


def flux_inputs(device: str, dtype: torch.dtype, smoke: bool, batch: int = 1) -> dict[str, Any]:
    cfg = FLUX_SMOKE if smoke else FLUX
    side, text = (4, 8) if smoke else (64, 512)  # packed latent side (1024 px / 8 / 2) and text tokens
    g = torch.Generator(device="cpu").manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], dim=-1).reshape(-1, 3).to(device=device, dtype=dtype)
    return {
        "hidden_states": rand(batch, side * side, cfg["in_channels"]),
        "encoder_hidden_states": rand(batch, text, cfg["joint_attention_dim"]),
        "pooled_projections": rand(batch, cfg["pooled_projection_dim"]),
        "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
        "img_ids": img_ids,
        "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
        "guidance": torch.full((batch,), 3.5, device=device, dtype=dtype),
        "return_dict": False,
    }


# ---------------------------------------------------------------------------- sites and maps
def site_channels(model: nn.Module, sites: Sequence[str], batch: dict) -> dict[str, int]:
    """Channel count of each site's output (act_fast.modeling.site_channels, probing with ``batch``)."""
    from act_fast.modeling import site_channels as measure

    channels = measure(model, sites, batch)
    missing = [s for s, c in channels.items() if c is None]
    if missing:
        raise RuntimeError(f"sites produced no tensor output during the probe forward: {missing[:5]}")
    return channels  # type: ignore[return-value]


def random_maps(channels: dict[str, int], kind: str, device: str, seed: int = 0) -> "af.SteeringMaps":
    """``kind``: ``fold`` (no support, bias 0) or ``support`` (bias and a [lo, hi] support)."""
    if kind not in ("fold", "support"):
        raise ValueError(kind)
    g = torch.Generator(device="cpu").manual_seed(seed)
    maps = {}
    for site, C in channels.items():
        if kind == "fold":
            w = 1.0 + 0.05 * torch.randn(C, generator=g)
            maps[site] = af.AffineMap(w.to(device), torch.zeros(C, device=device))
        else:
            w = 1.0 + 0.1 * torch.randn(C, generator=g)
            b = 0.1 * torch.randn(C, generator=g)
            lo = -(2.0 + torch.rand(C, generator=g))
            hi = 2.0 + torch.rand(C, generator=g)
            maps[site] = af.AffineMap(w.to(device), b.to(device), lo.to(device), hi.to(device))
    return af.SteeringMaps(maps, method=f"benchmark-random-{kind}", support="q_0_100-like" if kind == "support" else "q_all")


def mode_counts(handle: "af.SteeringHandle") -> dict[str, int]:
    """How many sites a steering handle put in each mode."""
    return dict(Counter(handle.modes.values()))
