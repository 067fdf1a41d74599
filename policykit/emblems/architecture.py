"""The models of the emblems world, built from configs (no weights).

Standard transformers / diffusers classes, as in builtin:shapes
(``policykit.shapes.architecture``), sized for 48x48 emblems and 160
entities: a ``CLIPModel`` whose text tower (4 layers x 256 wide, 32
positions) is the pipeline's ``text_encoder``; builtin:shapes' ``AutoencoderKL``
(4x down-sampling: 48x48x3 images <-> 12x12x4 latents, one latent cell per
half pattern period); a ``UNet2DConditionModel`` whose cross-attention reads
the text encoder's last hidden state; SD's DDPM noise schedule.
"""

from __future__ import annotations

from policykit.emblems.tokenizer import MAX_LENGTH
from policykit.shapes.architecture import (LATENT_CHANNELS, build_sampling_scheduler, build_training_scheduler,
                                          build_vae)

__all__ = ["build_clip", "build_vae", "build_unet", "build_training_scheduler", "build_sampling_scheduler",
           "TEXT_WIDTH", "LATENT_CHANNELS"]

TEXT_WIDTH = 256
TEXT_LAYERS = 4
PROJECTION_DIM = 128


def build_clip(vocab_size: int, image_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int):
    """A freshly initialised ``CLIPModel`` (text tower 4 x 256, vision ViT 4 x 128 on 8x8 patches)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                num_hidden_layers=TEXT_LAYERS, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                projection_dim=PROJECTION_DIM, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                pad_token_id=pad_token_id)
    vision = dict(image_size=image_size, patch_size=8, hidden_size=128, intermediate_size=512,
                  num_hidden_layers=4, num_attention_heads=4, projection_dim=PROJECTION_DIM)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJECTION_DIM))


def build_unet(latent_size: int, widths: tuple[int, ...] = (64, 128, 192), heads: int = 8):
    """A freshly initialised ``UNet2DConditionModel`` with standard cross-attention at every level.

    ``heads`` attention heads per block (diffusers' legacy ``attention_head_dim`` argument is the head
    count): 8 heads of 8 and 16 channels in worlds of revisions 1 and 2. Fewer, wider heads are the
    same parameters and cost less on a CPU, whose attention kernels are slow on 8-channel heads
    (``benchmarks/emblems_train_time.py``).
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D",) * len(widths),
        up_block_types=("CrossAttnUpBlock2D",) * len(widths),
        block_out_channels=widths, layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=heads,
    )
