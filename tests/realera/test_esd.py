"""ESD at its authors' defaults: the parameters each variant trains, the timestep bookkeeping, and a run
on the tiny pipeline that changes exactly those parameters and leaves the pipeline as it came."""

import copy

import pytest
import torch

from policykit.realera.esd import sample_step, sampling_steps, trainable_parameters


def test_esd_x_trains_the_cross_attention_and_esd_u_everything_else_but_time_and_output(tiny_pipe):
    unet = tiny_pipe.unet
    x, u = trainable_parameters(unet, "xattn"), trainable_parameters(unet, "noxattn")
    assert x and all(".attn2." in f".{n}" for n in x)
    assert {n.rsplit(".", 2)[-2] for n in x if n.endswith("weight")} >= {"to_q", "to_k", "to_v", "0"}
    assert not set(x) & set(u)
    left_out = {n for n, _ in unet.named_parameters()} - set(x) - set(u)
    assert left_out and all(n.startswith(("time_embedding.", "conv_out.", "conv_norm_out.")) for n in left_out)
    assert any(n.startswith("conv_in.") for n in u) and any("attn1" in n for n in u)
    with pytest.raises(ValueError, match="xattn"):
        trainable_parameters(unet, "everything")


def test_timesteps_come_from_the_slice_of_the_drawn_ddim_index():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k, t = sample_step(50, g)
        assert 0 <= k < 50 and 20 * k <= t < 20 * (k + 1)


def test_sampling_stops_where_the_authors_sampler_stops():
    assert [sampling_steps(k, 50) for k in (0, 1, 2, 3, 49)] == [50, 50, 49, 48, 2]


def test_esd_run_changes_only_its_parameters_and_restores_the_pipeline(tiny_pipe):
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy
    from policykit.realera import esd

    pipe = copy.deepcopy(tiny_pipe)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for method, train in (("esd", "xattn"), ("esd-u", "noxattn")):
        plan = compile_plan(Policy.model_validate({
            "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy", "metadata": {"name": "p", "version": "1.0.0"},
            "base_model": {"id": "builtin:shapes"}, "erase": [{"concept": "red circle"}],
            "training": {"method": method, "esd": {"iterations": 3, "learning_rate": 1e-3}}}))
        settings = plan.stage("esd_finetune").settings
        assert settings.train == train and settings.ddim_steps == 50 and settings.start_guidance == 3.0
        out = esd.run(plan, pipe, settings.model_copy(update={"ddim_steps": 4}), progress=False)
        assert set(out.delta) == set(trainable_parameters(pipe.unet, train))
        assert any(float(v.abs().max()) > 0 for v in out.delta.values())
        assert out.info["iterations"] == 3
        after = pipe.unet.state_dict()
        assert all(torch.equal(after[k], before[k]) for k in before)
