"""Tiny models built from configs (no downloads), shared by the test files."""

import torch


def tiny_llama(**overrides):
    """A 2-layer Llama, hidden size 32, vocab 100, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **overrides})).eval()


def tiny_unet():
    """A 2-level UNet2DConditionModel (8 and 16 channels, 8×8 latents, cross-attention dim 8)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    ).eval()


def unet_batches(generator: torch.Generator, shift: float, batch: int, n_batches: int):
    """UNet inputs: latents ``[batch, 4, 8, 8]`` shifted by ``shift``, timestep 10, text ``[batch, 5, 8]``."""
    return [
        {"sample": torch.randn(batch, 4, 8, 8, generator=generator) + shift, "timestep": torch.tensor(10), "encoder_hidden_states": torch.randn(batch, 5, 8, generator=generator)}
        for _ in range(n_batches)
    ]
