"""Fixtures shared by the end-to-end tests that run on a tiny random pipeline."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny random SD pipeline of :mod:`policykit.testing`, saved as a diffusers directory."""
    import torch

    from policykit.testing import build_tiny_pipeline

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny-model")
    build_tiny_pipeline().save_pretrained(path)
    return path
