"""The shipped builtin:shapes model is an ordinary, offline-loadable SD 1.x-style pipeline."""

import logging
import warnings

import numpy as np
import pytest

from policykit.shapes.sampling import MODEL_DIR

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "model_index.json").is_file(), reason="shapes model not trained")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded():
    """The pipeline, and every warning logged or raised while loading it."""
    # Import first: importing transformers' vision modules warns about torchvision
    # being absent, which says nothing about this model.
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion  # noqa: F401

    from policykit.models.loading import load_pipeline

    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = load_pipeline(MODEL_DIR)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return pipe, handler.records + [str(w.message) for w in caught]


def test_loads_offline_without_warnings_or_safety_checker(loaded):
    pipe, complaints = loaded
    assert complaints == []
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.safety_checker is None and pipe.feature_extractor is None


def test_plain_from_pretrained_works_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(MODEL_DIR))
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32


def test_components_are_the_standard_ones_realera_edits(loaded):
    pipe, _ = loaded
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.tokenizer, CLIPTokenizer)
    width = pipe.text_encoder.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == width
    attn2 = [m for name, m in pipe.unet.named_modules() if name.endswith("attn2")]
    assert attn2 and all(m.to_k.in_features == width and m.to_v.in_features == width for m in attn2)
    assert pipe.text_encoder.get_input_embeddings() is pipe.text_encoder.embeddings.token_embedding
    assert pipe.tokenizer.model_max_length == 16
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_text_encoder_is_the_clip_text_tower(loaded):
    import torch

    from policykit.shapes.sampling import load_clip

    pipe, _ = loaded
    clip = load_clip()
    ids = pipe.tokenizer(["a red circle", "an apple"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(ids)[0], clip.text_model(ids)[0])


def test_training_scheduler_is_standard_ddpm(loaded):
    from diffusers import DDPMScheduler

    pipe, _ = loaded
    ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
    assert ddpm.config.num_train_timesteps == 1000 and ddpm.config.prediction_type == "epsilon"


def test_samples_are_seeded_images(loaded):
    from policykit.shapes.sampling import sample_images

    pipe, _ = loaded
    first = sample_images(pipe, ["a red circle", "a blue square"], seed=3, steps=4)
    again = sample_images(pipe, ["a red circle", "a blue square"], seed=3, steps=4)
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)


def test_a_sample_cache_gives_the_same_images_and_never_another_models(loaded, tmp_path):
    import torch

    from policykit.shapes.sampling import pipeline_fingerprint, sample_images

    pipe, _ = loaded
    prompts = ["a red circle", "a blue square", "a green star"]
    fresh = sample_images(pipe, prompts, seed=3, steps=2, batch_size=2)
    cached = sample_images(pipe, prompts, seed=3, steps=2, batch_size=2, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.npy"))
    assert np.array_equal(fresh, cached) and len(files) == 2  # one file a batch

    calls = []
    real_call = type(pipe).__call__
    type(pipe).__call__ = lambda self, *a, **k: calls.append(a) or real_call(self, *a, **k)
    try:
        again = sample_images(pipe, prompts, seed=3, steps=2, batch_size=2, cache_dir=tmp_path)
        assert np.array_equal(again, fresh) and calls == []  # read back, nothing sampled
        other_seed = sample_images(pipe, prompts[:2], seed=4, steps=2, batch_size=2, cache_dir=tmp_path)
        assert len(calls) == 1 and not np.array_equal(other_seed, fresh[:2])
        before = pipeline_fingerprint(pipe)
        weight = next(p for n, p in pipe.unet.named_parameters() if "attn2.to_k" in n)
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.add_(0.5)  # an edit in memory is another model: its batches are sampled anew
            try:
                assert pipeline_fingerprint(pipe) != before
                sample_images(pipe, prompts, seed=3, steps=2, batch_size=2, cache_dir=tmp_path)
                assert len(calls) == 3
            finally:
                weight.copy_(saved)
        assert pipeline_fingerprint(pipe) == before
        files[0].write_bytes(b"torn")  # an unreadable file is sampled again
        assert np.array_equal(sample_images(pipe, prompts, seed=3, steps=2, batch_size=2, cache_dir=tmp_path), fresh)
        assert len(calls) == 4
    finally:
        type(pipe).__call__ = real_call
