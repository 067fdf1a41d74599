"""Fixtures for the RealEra math tests: the tiny random pipeline of :mod:`policykit.testing`.

Nothing is downloaded: the tokenizer is a small byte-level BPE vocabulary built
here, the text encoder, U-Net and VAE are randomly initialised from small
configs with fixed seeds. The structure is that of SD 1.x (CLIP text encoder,
cross-attention U-Net, KL VAE, DDPM scheduler); only the widths are tiny.
"""

from __future__ import annotations

import pytest

from policykit.testing import MAX_LENGTH, WORDS, build_clip_tokenizer, build_text_encoder, build_tiny_pipeline  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Keep tests from fighting the shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pipe():
    """Session-wide tiny random SD pipeline. Tests must not modify it (copy the U-Net first)."""
    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def clip_tokenizer():
    """SD 1.x-style tokenizer (pad = EOS)."""
    return build_clip_tokenizer()


@pytest.fixture(scope="session")
def openclip_tokenizer():
    """SD 2.x-style tokenizer (pad = "!", id 0)."""
    return build_clip_tokenizer(pad_token="!")


@pytest.fixture(scope="session")
def openclip_text_encoder(openclip_tokenizer):
    """A random 16-wide text encoder for the SD 2.x-style tokenizer."""
    return build_text_encoder(openclip_tokenizer, hidden_size=16, seed=1)


@pytest.fixture(scope="session")
def tokenizer_16():
    """builtin:shapes' tokenizer: every world word one token, padded with the EOS id to 16 positions."""
    from transformers import CLIPTokenizerFast

    from policykit.shapes.sampling import MODEL_DIR

    return CLIPTokenizerFast.from_pretrained(str(MODEL_DIR / "tokenizer"))
