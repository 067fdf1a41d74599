"""The tiny models of the shapes world, built from configs (no weights).

Everything is a standard transformers / diffusers class, so the code that
loads Stable Diffusion 1.x loads this world too: a ``CLIPModel`` (its text
tower is the pipeline's ``text_encoder``), an ``AutoencoderKL`` with 4x
down-sampling (32x32x3 images <-> 8x8x4 latents), a ``UNet2DConditionModel``
whose cross-attention (``attn2.to_k`` / ``to_v``) reads the text encoder's
last hidden state, and SD's DDPM noise schedule (epsilon prediction).
"""

from __future__ import annotations

from policykit.shapes.tokenizer import MAX_LENGTH

TEXT_WIDTH = 64
PROJECTION_DIM = 64
LATENT_CHANNELS = 4

#: Stable Diffusion 1.x's training noise schedule.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                steps_offset=1)


def build_clip(vocab_size: int, image_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int):
    """A freshly initialised tiny ``CLIPModel`` (text and vision towers)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                projection_dim=PROJECTION_DIM, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=64, intermediate_size=256,
                  num_hidden_layers=3, num_attention_heads=4, projection_dim=PROJECTION_DIM)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM)
    return CLIPModel(config)


def build_vae(image_size: int):
    """A freshly initialised tiny ``AutoencoderKL`` (4x down-sampling, 4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        # Narrow at full resolution (where convolutions cost most), wider below.
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
        latent_channels=LATENT_CHANNELS, sample_size=image_size,
    )


def build_unet(latent_size: int):
    """A freshly initialised tiny ``UNet2DConditionModel`` with standard cross-attention."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(48, 96), layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=4,
    )


def build_training_scheduler():
    """Stable Diffusion's DDPM training schedule (epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def build_sampling_scheduler():
    """The scheduler shipped with the pipeline: DPM-Solver++ on the same schedule (good in 25 steps)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**{k: v for k, v in SCHEDULE.items() if k != "clip_sample"})
