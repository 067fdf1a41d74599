"""MACE's LoRA stage: the attention positions of its loss (written out by hand), its timestep window, and a
run on the tiny pipeline whose fused edit changes only the cross-attention keys and values."""

import copy

import torch

from policykit.realera.mace_lora import attention_positions, mace_timestep_weights


def test_loss_positions_are_the_concept_tokens_and_every_end_of_text(tokenizer_16):
    # 0 BOS, 1 a, 2 photo, 3 of, 4 a, 5 red, 6 circle, 7 EOS, 8-15 padding (the EOS id)
    assert attention_positions(tokenizer_16, "a photo of a red circle", "red circle") == list(range(5, 16))
    # "the red circle on a plain background": 1 the, 2 red, 3 circle, 4 on, 5 a, 6 plain, 7 background, 8 EOS
    assert attention_positions(tokenizer_16, "the red circle on a plain background", "red circle") == \
        [2, 3] + list(range(8, 16))


def test_timesteps_are_drawn_from_maces_window():
    w = mace_timestep_weights(1000)
    assert abs(float(w.sum()) - 1) < 1e-9
    assert int(w.argmax()) in range(290, 311)         # the window's middle
    assert float(w[200:400].sum()) > 0.75 and float(w[:100].sum()) < 0.01 and float(w[600:].sum()) < 0.01


def _plan():
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy

    return compile_plan(Policy.model_validate({
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy", "metadata": {"name": "p", "version": "1.0.0"},
        "base_model": {"id": "builtin:shapes"}, "erase": [{"concept": "cat", "anchor": "dog"}],
        "preserve": [{"concept": "bird"}], "training": {"method": "mace", "lora": {"steps": 3}}}))


def test_a_concept_lora_takes_attention_off_the_concept_positions(tiny_pipe):
    from diffusers import DDPMScheduler

    from policykit.realera import mace_lora
    from policykit.realera.closed_form import find_cross_attention_projections
    from policykit.realera.noise_alignment import AttentionRecorder

    pipe = copy.deepcopy(tiny_pipe)
    settings = _plan().stage("mace_lora").settings.model_copy(
        update={"images_per_concept": 2, "image_steps": 2, "learning_rate": 3e-2, "steps": 40})
    (concept,) = mace_lora._concepts(_plan(), pipe, settings)
    projections = find_cross_attention_projections(pipe.unet)
    layers = sorted({n.rsplit(".", 1)[0] for n in projections})
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    products, _ = mace_lora.train_concept(pipe.unet, scheduler, concept, projections, settings,
                                          torch.Generator().manual_seed(0), layers)

    def attention_on_concept():
        recorder = AttentionRecorder(pipe.unet, layers)
        noisy = scheduler.add_noise(concept.latents[:1], torch.zeros_like(concept.latents[:1]), torch.tensor([300]))
        with torch.no_grad(), recorder.installed(), recorder.recording(slice(0, 1)) as maps:
            pipe.unet(noisy, 300, concept.conditionings[:1])
            return sum(float(m[0][..., concept.positions[0]].norm()) for m in dict(maps).values())

    before = attention_on_concept()
    with torch.no_grad():
        for name, linear in projections.items():
            linear.weight += products[name].float()
    assert attention_on_concept() < 0.9 * before


def test_mace_stage_on_a_tiny_pipeline(tiny_pipe):
    from policykit.realera import mace_lora
    from policykit.realera.closed_form import find_cross_attention_projections

    pipe = copy.deepcopy(tiny_pipe)
    plan = _plan()
    settings = plan.stage("mace_lora").settings
    assert (settings.rank, settings.steps, settings.learning_rate, settings.timesteps) == (1, 3, 1e-5, "mace")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    out = mace_lora.run(plan, pipe, settings.model_copy(update={"images_per_concept": 2, "image_steps": 2,
                                                               "learning_rate": 1e-2}), delta={}, progress=False)
    assert set(out.delta) == {f"{n}.weight" for n in find_cross_attention_projections(pipe.unet)}
    assert out.info["concepts"] == 1
    assert all(torch.isfinite(v).all() for v in out.delta.values())
    after = pipe.unet.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
