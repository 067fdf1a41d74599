"""Tiny *random* Stable Diffusion components built in code, for tests and benchmarks.

Nothing is downloaded: the tokenizer is a small BPE vocabulary built here,
the text encoder, U-Net and VAE are randomly initialised from small configs
with fixed seeds. The structure is that of SD 1.x (CLIP text encoder,
cross-attention U-Net, KL VAE, DDPM scheduler); only the widths are tiny, so
every code path that handles a real model runs in seconds on a CPU (the
practice of diffusers' own tests).
"""

from __future__ import annotations

#: Whole words the tiny BPE knows. Anything else falls back to one token per
#: character, which gives the tests multi-token concepts for free ("crimson").
WORDS = ["a", "photo", "of", "painting", "in", "forest", "the", "mickey", "mouse", "person",
         "cat", "dog", "red", "circle", "blue", "square", "picture", "cartoon"]
MAX_LENGTH = 16


def build_clip_tokenizer(pad_token: str = "<|endoftext|>", max_length: int = MAX_LENGTH, words=WORDS):
    """A CLIP tokenizer over lower-case letters plus ``words`` (default :data:`WORDS`).

    ``pad_token="<|endoftext|>"`` mimics SD 1.x (padding repeats EOS);
    ``pad_token="!"`` mimics the OpenCLIP tokenizer of SD 2.x (padding is id 0).
    """
    from transformers import CLIPTokenizer

    chars = ["!", "'", ",", "."] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = (pieces[0], pieces[1])
            if rule not in merges:
                merges.append(rule)
            vocab.setdefault(merged, len(vocab))
            pieces = [merged] + pieces[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=max_length)


def build_text_encoder(tokenizer, hidden_size: int = 32, seed: int = 0):
    """A 2-layer random CLIPTextModel matching ``tokenizer``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def build_tiny_vae(seed: int = 0):
    """A tiny random ``AutoencoderKL``: 16 x 16 images <-> 4 x 8 x 8 latents."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, sample_size=16,
    ).eval()


def build_tiny_pipeline(pad_token: str = "<|endoftext|>", seed: int = 0, prediction_type: str = "epsilon"):
    """The whole tiny random StableDiffusionPipeline (latents 4 x 8 x 8, images 16 x 16).

    The defaults are SD 1.x's structure; ``pad_token="!"`` with
    ``prediction_type="v_prediction"`` is SD 2.x's (OpenCLIP padding, v-prediction).
    """
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = build_clip_tokenizer(pad_token)
    text_encoder = build_text_encoder(tokenizer, seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size, attention_head_dim=2,
    ).eval()
    vae = build_tiny_vae(seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, clip_sample=False, prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class HalfBright:
    """Stand-in audit classifier: an image 'shows the concept' when its mean is above mid-grey.

    Random weights draw nothing a real classifier could judge; tests that
    check apply's mechanics (not erasure) use this instead.
    """

    name = "test:half-bright"

    def shows(self, images, concept):
        import numpy as np

        return [bool(np.asarray(img).mean() > 127) for img in images]


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A tiny random ``StableDiffusionXLPipeline``: two CLIP text encoders (the second with a projection, as
    SDXL's), their outputs concatenated for the U-Net's cross-attention, and the pooled embedding with the
    time ids as added conditions (``addition_embed_type="text_time"``). Latents 4 x 8 x 8, images 16 x 16.

    The encoders are 32 and 48 wide (cross-attention 80), the pooled projection 40: distinct widths, as SDXL's
    768, 1280 and 1280, so that nothing can mix the encoders up (diffusers' single-file reader tells them apart
    by width)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_clip_tokenizer(pad_token="!")
    text_encoder = build_text_encoder(tokenizer, hidden_size=32, seed=seed)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer_2.model_max_length, projection_dim=40,
        bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id)).eval()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=80, attention_head_dim=2,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=40 + 6 * 8,
        use_linear_projection=True).eval()
    vae = build_tiny_vae(seed)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                       beta_end=0.012, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
