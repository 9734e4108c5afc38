"""Site presets of diffusers models, keyed by class name.

``post_layernorm`` per family (the norm after attention that feeds the feed-forward, as Llama's
``post_attention_layernorm``):

- UNet2DConditionModel (SDXL-style): ``norm3`` of every ``BasicTransformerBlock``;
- FluxTransformer2DModel, SD3Transformer2DModel: ``norm2`` of every double-stream block (image
  stream; Flux's single-stream blocks run attention and MLP in parallel off one norm);
- PixArtTransformer2DModel: ``norm2``, which PixArt applies before the feed-forward, after both
  attentions.

``layernorm`` is every norm of the blocks (UNet: resnet and attention GroupNorms included; DiTs:
the plain LayerNorm inside each adaptive norm, context stream included; never per-head q/k norms
nor the final output norm). ``o_proj`` is ``to_out.0`` and ``attn_out`` the attention module (first
output: the image stream); UNet and PixArt count self- and cross-attention (``attn1``, ``attn2``),
Flux counts its single-stream attention in ``attn_out`` (it has no ``to_out`` there). ``mlp_out``
is the feed-forward module ``ff`` (image stream).
"""

from __future__ import annotations

from act_fast.integrations.families import SiteFamily

_TRANSFORMER_BLOCK = r"attentions\.\d+\.transformer_blocks\.\d+"

UNET = SiteFamily(
    r"down_blocks\.\d+|mid_block|up_blocks\.\d+",
    {
        "post_layernorm": rf"{_TRANSFORMER_BLOCK}\.norm3",
        "layernorm": rf"resnets\.\d+\.norm[12]|attentions\.\d+\.norm|{_TRANSFORMER_BLOCK}\.norm[123]",
        "o_proj": rf"{_TRANSFORMER_BLOCK}\.attn[12]\.to_out\.0",
        "attn_out": rf"{_TRANSFORMER_BLOCK}\.attn[12]",
        "mlp_out": rf"{_TRANSFORMER_BLOCK}\.ff",
    },
)
MMDIT = SiteFamily(  # SD3's JointTransformerBlock; Flux adds single-stream blocks below
    r"transformer_blocks\.\d+",
    {
        "post_layernorm": r"norm2",
        "layernorm": r"norm1\.norm|norm1_context\.norm|norm2|norm2_context",
        "o_proj": r"attn\.to_out\.0",
        "attn_out": r"attn",
        "mlp_out": r"ff",
    },
)
FLUX = SiteFamily(
    r"(?:single_)?transformer_blocks\.\d+",
    {**MMDIT.presets, "layernorm": rf"{MMDIT.presets['layernorm']}|norm\.norm"},
)
PIXART = SiteFamily(
    r"transformer_blocks\.\d+",
    {"post_layernorm": r"norm2", "layernorm": r"norm[12]", "o_proj": r"attn[12]\.to_out\.0", "attn_out": r"attn[12]", "mlp_out": r"ff"},
)

DIFFUSERS_FAMILIES: dict[str, SiteFamily] = {
    "UNet2DConditionModel": UNET,
    "FluxTransformer2DModel": FLUX,
    "SD3Transformer2DModel": MMDIT,
    "PixArtTransformer2DModel": PIXART,
}
