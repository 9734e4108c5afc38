"""steer() on a diffusers pipeline: λ per denoising step through the step-end callback."""

import pytest
import torch
from random_maps import random_maps
from tiny_models import tiny_unet

import act_fast as af


@pytest.fixture(scope="module")
def pipe():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1,
    ).eval()
    scheduler = DDIMScheduler(clip_sample=False, steps_offset=1)
    # Prompt embeddings are passed directly, so no text encoder or tokenizer is needed.
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=tiny_unet(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoise(pipe, **kwargs):
    emb = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    return pipe(
        prompt_embeds=emb, negative_prompt_embeds=torch.zeros_like(emb), num_inference_steps=4, height=16, width=16,
        output_type="latent", generator=torch.Generator().manual_seed(0), **kwargs,
    ).images


@pytest.mark.parametrize("schedule", [[0.0, 0.25, 0.5, 1.0], lambda step: 1.0 - 0.3 * step])
def test_strength_schedule_per_denoising_step(pipe, schedule):
    maps = random_maps(pipe.unet, af.sites(pipe.unet, "layernorm"), support=True)
    base = denoise(pipe)
    with af.steer(pipe.unet, maps) as h:
        seen = []
        recorder = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(float(h.strength)))
        try:
            steered = denoise(pipe, callback_on_step_end=h.step_callback(schedule))
        finally:
            recorder.remove()
    expected = schedule if isinstance(schedule, list) else [schedule(i) for i in range(4)]
    assert seen == pytest.approx(expected)  # one UNet call per step (classifier-free guidance is batched)
    assert not torch.allclose(steered, base)


def test_zero_schedule_is_unsteered(pipe):
    maps = random_maps(pipe.unet, af.sites(pipe.unet, "layernorm"), support=True)
    base = denoise(pipe)
    # op mode adds λ·(T(x) − x) = 0 exactly; guidance (scale 7.5) would amplify the fused
    # kernels' reduction-order differences over the steps.
    with af.steer(pipe.unet, maps, mode="op") as h:
        zero = denoise(pipe, callback_on_step_end=h.step_callback([0.0]))
    torch.testing.assert_close(zero, base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="empty"):
        with af.steer(pipe.unet, maps) as h:
            h.step_callback([])
