"""The training recipe is seeded: the same recipe writes the same model, bit for bit."""

from dataclasses import replace

import pytest

from policykit.models import resolve_model
from policykit.shapes.train import Recipe, train

pytestmark = pytest.mark.slow

TINY = replace(Recipe(), clip_steps=2, clip_batch=24, vae_steps=2, vae_batch=4, unet_steps=3, unet_batch=4, unet_images=48)


def test_same_seed_same_files_and_a_loadable_pipeline(tmp_path):
    train(tmp_path / "a", TINY)
    train(tmp_path / "b", TINY)
    a, b = resolve_model(str(tmp_path / "a")), resolve_model(str(tmp_path / "b"))
    assert a.files == b.files
    assert {"model_index.json", "recipe.json", "clip/model.safetensors", "tokenizer/tokenizer.json",
            "tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(a.files)
    assert a.sha256() == b.sha256()

    from policykit.models.loading import load_pipeline

    pipe = load_pipeline(a.path)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_another_seed_gives_another_model(tmp_path):
    train(tmp_path / "a", TINY)
    train(tmp_path / "c", replace(TINY, seed=1))
    assert resolve_model(str(tmp_path / "a")).sha256() != resolve_model(str(tmp_path / "c")).sha256()
