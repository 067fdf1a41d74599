"""Noise alignment on the tiny random pipeline: it learns, the teacher stays, NaN stops it, the adapter round-trips."""

import copy

import pytest
import torch

from policykit.realera.closed_form import find_cross_attention_projections
from policykit.realera.encoding import encode_prompts
from policykit.realera.edit import LORA_WEIGHT_NAME
from policykit.realera.noise_alignment import (AttentionRecorder, NoiseAlignmentData, NoiseAlignmentTrainer,
                                               NonFiniteLossError, generate_training_latents, timestep_weights)
from policykit.realera.settings import NoiseAlignmentSettings
from policykit.models.text import single_encoder


def _data(pipe, n_latents=4):
    enc, tok = pipe.text_encoder, pipe.tokenizer
    erase = encode_prompts(single_encoder(enc, tok), ["a photo of mickey mouse", "mickey mouse in a forest"])
    anchor = encode_prompts(single_encoder(enc, tok), ["a photo of a cat", "a cat in a forest"])
    preserve = encode_prompts(single_encoder(enc, tok), ["a photo of a red circle", "a blue square", ""])
    latents = torch.randn(n_latents, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return NoiseAlignmentData(erase=erase, erase_targets=anchor, preserve=preserve, latents=latents,
                              null=encode_prompts(single_encoder(enc, tok), [""])[0])


def _trainer(pipe, **config):
    unet = copy.deepcopy(pipe.unet)
    settings = dict(rank=2, steps=12, learning_rate=3e-2, batch_size=2, seed=0, attention_weight=1.0)
    return NoiseAlignmentTrainer(unet, pipe.scheduler, _data(pipe), NoiseAlignmentSettings(**{**settings, **config}),
                                 progress=False)


def test_config_validates_itself():
    with pytest.raises(ValueError, match="target"):
        NoiseAlignmentSettings(target="nope")
    with pytest.raises(ValueError, match="rank"):
        NoiseAlignmentSettings(rank=0)


@pytest.mark.parametrize("target", ["anchor", "negative_guidance"])
def test_loss_decreases_and_teacher_is_unchanged(tiny_pipe, target):
    trainer = _trainer(tiny_pipe, target=target)
    unet = trainer.unet
    probe = trainer.sample_batch(torch.Generator().manual_seed(123))
    with torch.no_grad():
        before = trainer.compute_loss(probe)
    assert before.erase > 0 and before.preserve == 0 and before.attention == 0  # LoRA starts at zero
    report = trainer.train()
    with torch.no_grad():
        after = trainer.compute_loss(probe)
    assert len(report.losses) == 12
    assert after.total < 0.7 * before.total, (before, after)
    assert after.preserve > 0  # the adapter moved, and the preserve term sees it

    x, t = probe.noisy[:1], probe.timesteps[:1]
    cond = probe.erase[:1]
    with torch.no_grad():
        base = tiny_pipe.unet(x, t, cond).sample
        with trainer.teacher():
            teacher = unet(x, t, cond).sample
        student = unet(x, t, cond).sample
    assert torch.allclose(teacher, base, atol=1e-6)
    assert not torch.allclose(student, base, atol=1e-4)
    # only the LoRA of cross-attention projections was added
    lora = {n.split(".lora_")[0] for n, _ in unet.named_parameters() if "lora_" in n}
    assert lora == set(find_cross_attention_projections(tiny_pipe.unet))


def test_nan_guard_stops_with_a_clear_message(tiny_pipe):
    trainer = _trainer(tiny_pipe, steps=3)
    trainer.data.erase[0, 3, 0] = float("nan")
    trainer.data.erase[1, 3, 0] = float("nan")
    lora_before = [p.detach().clone() for p in trainer.parameters]
    with pytest.raises(NonFiniteLossError, match="nan at step 1"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(lora_before, trainer.parameters))


def test_save_load_round_trip_gives_identical_outputs(tiny_pipe, tmp_path):
    trainer = _trainer(tiny_pipe, steps=3, train_query_and_out=True, lora_alpha=4.0)
    trainer.train()
    path = trainer.save(tmp_path / "adapter")
    assert path.name == "pytorch_lora_weights.safetensors" and path.exists()
    fresh = copy.deepcopy(tiny_pipe.unet)
    fresh.load_lora_adapter(str(tmp_path / "adapter"), prefix="unet", adapter_name="check",
                            weight_name=LORA_WEIGHT_NAME)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    cond = trainer.data.preserve[:2]
    with torch.no_grad():
        assert torch.equal(trainer.unet(x, 500, cond).sample, fresh(x, 500, cond).sample)
        assert not torch.equal(tiny_pipe.unet(x, 500, cond).sample, fresh(x, 500, cond).sample)


def test_attention_recorder_captures_maps_and_restores_processors(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.unet)
    layers = sorted({n.rsplit(".", 1)[0] for n in find_cross_attention_projections(unet)})
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    recorder = AttentionRecorder(unet, layers)
    x, cond = torch.randn(3, 4, 8, 8), torch.randn(3, 16, 32)
    with torch.no_grad():
        reference = unet(x, 10, cond).sample
        with recorder.installed(), recorder.recording(slice(1, 3)) as maps:
            out = unet(x, 10, cond).sample
    assert torch.allclose(out, reference, atol=1e-5)
    assert sorted(maps) == sorted(f"{n}.processor" for n in layers)
    for m in maps.values():
        assert m.shape[0] == 2 and m.shape[-1] == 16
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)  # softmax over tokens
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_importance_sampling_favours_the_middle():
    w = timestep_weights(1000, "importance")
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[500]) > 5 * float(w[10]) and float(w[500]) > 5 * float(w[990])
    assert torch.allclose(timestep_weights(10, "uniform"), torch.full((10,), 0.1, dtype=torch.float64))


def test_training_latents_are_generated_once_and_cached(tiny_pipe, tmp_path):
    kwargs = dict(per_prompt=2, steps=2, seed=1, cache_dir=tmp_path)
    first = generate_training_latents(tiny_pipe, ["a photo of a cat"], **kwargs)
    assert first.shape == (2, 4, 8, 8)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    assert torch.equal(generate_training_latents(tiny_pipe, ["a photo of a cat"], **kwargs), first)
    other = generate_training_latents(tiny_pipe, ["a photo of a dog"], **kwargs)
    assert not torch.equal(other, first) and len(list(tmp_path.glob("*.safetensors"))) == 2
    # a cache hit returns what is in the file, not a recomputation
    from safetensors.torch import save_file
    save_file({"latents": torch.zeros(2, 4, 8, 8)}, str(files[0]))
    assert torch.equal(generate_training_latents(tiny_pipe, ["a photo of a cat"], **kwargs), torch.zeros(2, 4, 8, 8))


def test_half_precision_unet_trains_a_float32_adapter(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.unet).to(torch.bfloat16)
    config = NoiseAlignmentSettings(rank=2, steps=3, learning_rate=1e-2, batch_size=2)
    trainer = NoiseAlignmentTrainer(unet, tiny_pipe.scheduler, _data(tiny_pipe), config, progress=False)
    report = trainer.train()
    assert all(torch.isfinite(torch.tensor(report.losses)))
    assert {p.dtype for p in trainer.parameters} == {torch.float32}
    assert all(p.dtype == torch.bfloat16 for n, p in unet.named_parameters() if "lora_" not in n)


def test_same_seed_same_adapter(tiny_pipe):
    runs = []
    for _ in range(2):
        trainer = _trainer(tiny_pipe, steps=3)
        report = trainer.train()
        runs.append((report.losses, [p.detach().clone() for p in trainer.parameters]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    other = _trainer(tiny_pipe, steps=3, seed=1).train()
    assert other.losses != runs[0][0]
