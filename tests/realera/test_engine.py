"""The engine on the tiny random pipeline: stage order per preset, caching and resume,
one joint solve for several concepts, the pipeline left as it came, save/load/apply round trip."""

import copy

import pytest
import torch

from policykit.testing import build_tiny_pipeline
from policykit.plan import AUDIT, METHOD_STAGES, compile_plan
from policykit.policy.schema import Policy
from policykit.realera import engine
from policykit.realera.closed_form import find_cross_attention_projections
from policykit.realera.edit import DELTA_FILE, add_delta, apply_edit, load_edit, save_edit
from policykit.realera.encoding import encode_erased, encode_preserved
from policykit.realera.encoding import encode_concept
from policykit.realera.noise_alignment import NoiseAlignmentTrainer
from policykit.models.text import text_model

OPTIONS = engine.EngineOptions(latents_per_prompt=1, latent_steps=2)
TEMPLATES = ["a photo of {}", "a painting of {}"]


def _plan(method="realera", erase=None, steps=3, **training):
    policy = {
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
        "metadata": {"name": "t", "version": "1.0.0"}, "base_model": {"id": "builtin:shapes"},
        "defaults": {"templates": TEMPLATES, "neighbors": {"samples": 3, "radius": 0.3, "min_cosine": 0.5}},
        "erase": erase or [{"concept": "mickey mouse", "anchor": "cartoon", "synonyms": ["mouse"]},
                           {"concept": "red circle", "anchor": "blue circle"}],
        "preserve": [{"concept": "cat"}],
        "training": {"method": method, "lora": {"steps": steps, "batch_size": 2, "rank": 2},
                     "esd": {"iterations": steps}, **training},
    }
    return compile_plan(Policy.model_validate(policy))


def _closed_form_plan(erase=None):
    """policykit's closed form alone: ``realera-cf`` with mining, the shell and the vocabulary drawing nothing."""
    plan = _plan("realera-cf", erase=erase, closed_form={"vocabulary_prompts": 0})
    return plan.model_copy(update={"erase": tuple(e.model_copy(update={"neighbors": e.neighbors.model_copy(
        update={"samples": 0, "beyond_samples": 0})}) for e in plan.erase)})


def _record(edit, name="closed_form_refinement"):
    return next(r for r in edit.records if r.name == name)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def _run(plan, pipe, **kwargs):
    return engine.run_plan(plan, pipe, inputs_key="tiny", options=OPTIONS, progress=False,
                           log=kwargs.pop("log", lambda line: None), **kwargs)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", sorted(METHOD_STAGES))
def test_each_preset_runs_its_plan_stages_in_order_and_no_audit(pipe, method):
    plan = _plan(method)
    edit = _run(plan, pipe)
    assert [r.name for r in edit.records] == [s for s in METHOD_STAGES[method] if s != AUDIT]
    assert bool(edit.weights) == bool({"closed_form_refinement", "esd_finetune"} & set(plan.stage_names))
    assert (edit.lora is not None) == ("noise_alignment" in plan.stage_names)
    assert bool(edit.coverage) == ("mine_neighbors" in plan.stage_names)


def test_run_leaves_the_pipeline_as_it_came(pipe):
    unet, text = _state(pipe.unet), _state(pipe.text_encoder)
    _run(_plan("realera"), pipe)
    assert not getattr(pipe.unet, "peft_config", {}) or not pipe.unet.peft_config
    after = _state(pipe.unet)
    assert after.keys() == unet.keys() and all(torch.equal(after[k], unet[k]) for k in unet)
    assert all(torch.equal(v, text[k]) for k, v in _state(pipe.text_encoder).items())


def test_cache_reuses_every_stage_and_resumes_after_a_crash(pipe, tmp_path, monkeypatch):
    plan = _plan("realera")
    real_train = NoiseAlignmentTrainer.train

    def crash(self):
        raise RuntimeError("power cut")

    monkeypatch.setattr(NoiseAlignmentTrainer, "train", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        _run(plan, pipe, cache_dir=tmp_path)
    # the failed run left no adapter behind: no peft config, no LoRA layers
    assert not getattr(pipe.unet, "peft_config", None)
    assert not [n for n, _ in pipe.unet.named_modules() if "lora" in n.split(".")[-1].lower()]
    monkeypatch.setattr(NoiseAlignmentTrainer, "train", real_train)

    lines = []
    resumed = _run(plan, pipe, cache_dir=tmp_path, log=lines.append)
    assert [r.cached for r in resumed.records] == [True, True, True, False]
    assert any("noise_alignment: done" in line for line in lines)
    again = _run(plan, pipe, cache_dir=tmp_path)
    assert all(r.cached for r in again.records)
    assert all(torch.equal(again.weights[k], resumed.weights[k]) for k in resumed.weights)
    assert all(torch.equal(again.lora[k], resumed.lora[k]) for k in resumed.lora)
    # a changed closed-form setting reruns that stage and the ones after it, not the mining before it
    changed = _run(_plan("realera", closed_form={"lambda": 0.5}), pipe, cache_dir=tmp_path)
    assert [r.cached for r in changed.records] == [True, True, False, False]


def test_one_joint_solve_maps_every_concept_to_its_anchor_and_keeps_the_preserve(pipe):
    plan = _closed_form_plan()
    edit = _run(plan, pipe)
    record = _record(edit)
    assert record.info["erase_residual"] < 0.5 * record.info["erase_residual_before"]
    projections = find_cross_attention_projections(pipe.unet)
    for entry in plan.erase:
        for phrase in (entry.concept, *entry.synonyms):
            before = after = 0.0
            for t in encode_concept(text_model(pipe), TEMPLATES, phrase, entry.anchor).templates:
                e, e_star = t.embeddings[0], t.anchors
                for name, linear in projections.items():
                    w = linear.weight.detach()
                    w2 = w + edit.weights[f"{name}.weight"]
                    before += float((e @ w.T - e_star @ w.T).norm())
                    after += float((e @ w2.T - e_star @ w.T).norm())
            assert after < 0.5 * before, (phrase, before, after)
    # the preserve moves much less than the erased concepts do
    keep = encode_concept(text_model(pipe), TEMPLATES, "cat", "cat").embedding_rows()
    for name, linear in projections.items():
        w = linear.weight.detach()
        drift = (keep @ edit.weights[f"{name}.weight"].T).norm() / (keep @ w.T).norm()
        assert drift < 0.2


def _stacked_least_squares(w, erase, preserve, lam):
    """argmin_W' sum a|W'e - W e*|^2 + sum b|W'p - W p|^2 + lam|W' - W|^2, as one stacked lstsq (float64)."""
    w = w.double()
    e, e_star, a = erase.rows.double(), erase.targets.double(), erase.alpha.double().sqrt()[:, None]
    p, b = preserve.rows.double(), preserve.beta.double().sqrt()[:, None]
    eye = torch.eye(w.shape[1], dtype=torch.float64)
    inputs = torch.cat([a * e, b * p, lam ** 0.5 * eye])
    outputs = torch.cat([a * e_star @ w.T, b * p @ w.T, lam ** 0.5 * w.T])
    return torch.linalg.lstsq(inputs, outputs).solution.T


def test_two_concepts_are_solved_together_not_one_after_the_other(pipe):
    plan = _closed_form_plan()
    both = _run(plan, pipe)
    first_plan = _closed_form_plan(erase=[{"concept": "mickey mouse", "anchor": "cartoon", "synonyms": ["mouse"]}])
    first = _run(first_plan, pipe)
    assert _record(both).info["erase_rows"] > _record(first).info["erase_rows"]

    # The joint edit is the least-squares solution of the stacked system of both concepts...
    erase = encode_erased(plan, pipe, OPTIONS.leak_padding)
    preserve = encode_preserved(plan, pipe, OPTIONS.leak_padding, OPTIONS.regularizer_weight)
    lam = plan.stage("closed_form_refinement").settings.lambda_
    projections = find_cross_attention_projections(pipe.unet, targets=("to_k", "to_v"))
    assert both.weights.keys() == {f"{name}.weight" for name in projections}
    joint = {}
    for name, layer in projections.items():
        joint[name] = _stacked_least_squares(layer.weight.detach(), erase, preserve, lam)
        got = layer.weight.detach().double() + both.weights[f"{name}.weight"].double()
        assert (got - joint[name]).norm() / joint[name].norm() < 1e-5, name

    # ...and not the second concept solved on top of the first's edit.
    second_plan = _closed_form_plan(erase=[{"concept": "red circle", "anchor": "blue circle"}])
    edited = copy.deepcopy(pipe)
    add_delta(edited.unet, first.weights)
    second = _run(second_plan, edited)
    edited_projections = find_cross_attention_projections(edited.unet, targets=("to_k", "to_v"))
    for name, layer in edited_projections.items():
        sequential = layer.weight.detach().double() + second.weights[f"{name}.weight"].double()
        assert (sequential - joint[name]).norm() / joint[name].norm() > 1e-3, name


def test_save_load_apply_round_trip(pipe, tmp_path):
    edit = _run(_plan("realera"), pipe)
    weights_dir = save_edit(edit, tmp_path / "artifact")
    assert (weights_dir / DELTA_FILE).is_file()
    assert (weights_dir / "lora" / "pytorch_lora_weights.safetensors").is_file()
    loaded = load_edit(tmp_path / "artifact")
    assert loaded.method == "realera" and loaded.plan_hash == edit.plan_hash
    assert [r.name for r in loaded.records] == [r.name for r in edit.records] and loaded.coverage == edit.coverage
    assert loaded.lora.keys() == edit.lora.keys()

    in_memory = apply_edit(copy.deepcopy(pipe), edit)
    from_disk = apply_edit(copy.deepcopy(pipe), tmp_path / "artifact")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size,
                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = pipe.unet(latents, 500, cond).sample
        a = in_memory.unet(latents, 500, cond).sample
        b = from_disk.unet(latents, 500, cond).sample
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, base, atol=1e-6)
    # the adapter is the diffusers LoRA format: a plain pipeline loads it
    plain = copy.deepcopy(pipe)
    plain.load_lora_weights(str(weights_dir / "lora"), adapter_name="check")
    assert "check" in plain.unet.peft_config


def test_apply_refuses_an_edit_for_another_model(pipe):
    edit = _run(_closed_form_plan(), pipe)
    other = copy.deepcopy(pipe)
    key = next(iter(edit.weights))
    edit.weights[key] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        apply_edit(other, edit)
