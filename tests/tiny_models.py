"""Tiny models built from configs (no downloads), shared by the test files, and their inputs.

Every factory returns an eval-mode model with 2 layers and hidden size ≤ 64 whose forward on
:func:`tiny_inputs` takes well under a second on CPU.
"""

import torch

CAUSAL_LM_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2")
DIFFUSERS_FACTORIES = ("tiny_unet", "tiny_flux", "tiny_sd3", "tiny_pixart")

_DECODER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=100
)
_CONFIGS = {
    **dict.fromkeys(CAUSAL_LM_TYPES, _DECODER),
    "phi3": {**_DECODER, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},  # defaults lie outside the vocabulary
    "gpt2": dict(n_embd=32, n_inner=64, n_layer=2, n_head=4, n_positions=64, vocab_size=100, bos_token_id=1, eos_token_id=2),
}
TEXT_LEN = 5  # diffusion text tokens


def tiny_causal_lm(model_type: str, **overrides):
    """A 2-layer causal LM of ``model_type`` (one of :data:`CAUSAL_LM_TYPES`), hidden size 32,
    vocab 100, with the model's default attention (sdpa; eager for gemma2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**_CONFIGS[model_type], **overrides})).eval()


def tiny_llama(**overrides):
    """A 2-layer Llama, hidden size 32, vocab 100, in eval mode."""
    return tiny_causal_lm("llama", **overrides)


def tiny_bert(**overrides):
    """A 2-layer BertModel, hidden size 32, vocab 100."""
    from transformers import BertConfig, BertModel

    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100, max_position_embeddings=64)
    return BertModel(BertConfig(**{**cfg, **overrides})).eval()


def tiny_unet():
    """A 2-level UNet2DConditionModel (8 and 16 channels, 8×8 latents, cross-attention dim 8)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).eval()


def tiny_flux():
    """A FluxTransformer2DModel with 2 double- and 2 single-stream blocks, width 16, 8 latent channels."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4),
    ).eval()


def tiny_sd3():
    """An SD3Transformer2DModel with 2 joint blocks, width 16, 4×8×8 latents."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, pos_embed_max_size=8,
    ).eval()


def tiny_pixart():
    """A PixArtTransformer2DModel with 2 blocks, width 16, 4×8×8 latents, captions of width 12."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, cross_attention_dim=16,
        sample_size=8, patch_size=2, caption_channels=12,
    ).eval()


def _unet_inputs(batch: int, generator: torch.Generator | None, shift: float = 0.0) -> dict:
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=generator) + shift,
        "timestep": torch.tensor(10),
        "encoder_hidden_states": torch.randn(batch, TEXT_LEN, 8, generator=generator),
    }


def _flux_inputs(batch: int, generator: torch.Generator | None) -> dict:
    grid = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).reshape(16, 2)
    return {
        "hidden_states": torch.randn(batch, 16, 8, generator=generator),  # 4×4 latent patches
        "encoder_hidden_states": torch.randn(batch, TEXT_LEN, 16, generator=generator),
        "pooled_projections": torch.randn(batch, 8, generator=generator),
        "timestep": torch.full((batch,), 0.5),
        "img_ids": torch.cat([torch.zeros(16, 1), grid.float()], 1),
        "txt_ids": torch.zeros(TEXT_LEN, 3),
    }


def _sd3_inputs(batch: int, generator: torch.Generator | None) -> dict:
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(batch, TEXT_LEN, 16, generator=generator),
        "pooled_projections": torch.randn(batch, 8, generator=generator),
        "timestep": torch.full((batch,), 10),
    }


def _pixart_inputs(batch: int, generator: torch.Generator | None) -> dict:
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(batch, TEXT_LEN, 12, generator=generator),
        "timestep": torch.full((batch,), 10),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def _text_inputs(batch: int, generator: torch.Generator | None, length: int = 7) -> dict:
    """Token ids 3..99 (above the special ids), the last row left-padded by two tokens."""
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[-1, :2] = 0
    return {"input_ids": torch.randint(3, 100, (batch, length), generator=generator), "attention_mask": mask}


_INPUTS = {
    "UNet2DConditionModel": _unet_inputs,
    "FluxTransformer2DModel": _flux_inputs,
    "SD3Transformer2DModel": _sd3_inputs,
    "PixArtTransformer2DModel": _pixart_inputs,
}


def tiny_inputs(model, batch: int = 2, generator: torch.Generator | None = None) -> dict:
    """Forward keyword inputs for a model from this file: token ids and an attention mask for
    the transformers models, latents / timestep / text embeddings for the diffusers ones."""
    return _INPUTS.get(type(model).__name__, _text_inputs)(batch, generator)


def unet_batches(generator: torch.Generator, shift: float, batch: int, n_batches: int):
    """UNet inputs: latents ``[batch, 4, 8, 8]`` shifted by ``shift``, timestep 10, text ``[batch, 5, 8]``."""
    return [_unet_inputs(batch, generator, shift) for _ in range(n_batches)]


def model_output(model, inputs: dict) -> torch.Tensor:
    """The main output tensor of a forward without gradients: logits, last hidden state or sample."""
    with torch.no_grad():
        out = model(**inputs)
    for key in ("logits", "last_hidden_state", "sample"):
        if hasattr(out, key):
            return getattr(out, key)
    return out[0]
