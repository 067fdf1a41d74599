"""Every method preset compiles to its stages with typed settings; a preset's defaults yield to the policy's."""

import pytest

from policykit.plan import METHOD_STAGES, Plan, compile_plan
from policykit.policy.schema import Policy
from policykit.realera import presets
from policykit.realera.settings import ClosedFormSettings, EsdSettings, NoiseAlignmentSettings

POLICY = {
    "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
    "metadata": {"name": "p", "version": "1.0.0"}, "base_model": {"id": "builtin:shapes"},
    "erase": [{"concept": "red circle"}], "preserve": [{"concept": "red square"}],
}

EXPECTED = {  # mining, beyond, closed-form rows, noise alignment, ESD's trained layers
    "realera": (True, True, "realera", True, None),
    "realera-no-bcr": (True, False, "realera", True, None),
    "realera-cf": (True, True, "realera", False, None),
    "uce": (False, False, "uce", False, None),
    "mace": (False, False, "mace", False, None),
    "esd": (False, False, None, False, "xattn"),
    "esd-u": (False, False, None, False, "noxattn"),
}


def _plan(method, **training):
    return compile_plan(Policy.model_validate({**POLICY, "training": {"method": method, **training}}))


def test_expected_table_covers_every_preset():
    assert set(EXPECTED) == set(METHOD_STAGES) == set(presets.METHOD_STAGES)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_preset_stages_and_typed_settings(method):
    plan = _plan(method, lora={"steps": 7})
    mining, beyond, rows, noise_alignment, esd = EXPECTED[method]
    assert (plan.stage("mine_neighbors") is not None) is mining
    assert (plan.stage("beyond_concept_regularization") is not None) is beyond
    cfr, na, ft = (plan.stage(n) for n in ("closed_form_refinement", "noise_alignment", "esd_finetune"))
    assert (cfr.settings.rows if cfr else None) == rows
    if cfr:
        assert isinstance(cfr.settings, ClosedFormSettings)
        assert cfr.settings.use_mined_neighbors is mining and cfr.settings.use_beyond_concept is beyond
    assert (na is not None) is noise_alignment
    if na:
        assert isinstance(na.settings, NoiseAlignmentSettings) and na.settings.steps == 7
    assert (plan.stage("mace_lora") is not None) is (method == "mace")
    assert (ft.settings.train if ft else None) == esd
    if ft:
        assert isinstance(ft.settings, EsdSettings)
        assert (ft.settings.iterations, ft.settings.learning_rate, ft.settings.negative_guidance) == (1000, 1e-5, 1.0)


def test_peer_defaults_apply_unless_the_policy_sets_the_value():
    uce = _plan("uce").stage("closed_form_refinement").settings
    assert (uce.rows, uce.lambda_, uce.erase_scale, uce.preserve_scale) == ("uce", 0.5, 1.0, None)
    assert _plan("uce", closed_form={"lambda": 0.7}).stage("closed_form_refinement").settings.lambda_ == 0.7
    lora = _plan("mace", lora={"steps": 9}).stage("mace_lora").settings
    assert (lora.rank, lora.learning_rate, lora.steps) == (1, 1e-5, 9)  # MACE's, but the policy's steps
    assert _plan("realera").stage("closed_form_refinement").settings.preserve_scale is None


@pytest.mark.parametrize("category, lam, preserve_scale, lr, steps", [
    ("object", 1e3, 0.0, 1e-5, 50), ("brand", 1e3, 0.0, 1e-5, 50), ("person", 0.0, 1e-8 * 8e3, 1e-4, 50),
    ("style", 0.0, 1e-8 * 8e4, 1e-4, 50), ("nsfw", 0.0, 0.0, 1e-5, 120)])
def test_mace_takes_the_authors_config_for_the_kind_of_concept(category, lam, preserve_scale, lr, steps):
    policy = Policy.model_validate({**POLICY, "erase": [{"concept": "red circle", "category": category}],
                                    "training": {"method": "mace"}})
    plan = compile_plan(policy)
    cfr, lora = plan.stage("closed_form_refinement").settings, plan.stage("mace_lora").settings
    assert cfr.lambda_ == lam and cfr.preserve_scale == pytest.approx(preserve_scale)
    assert (lora.learning_rate, lora.steps, lora.lambda_) == (lr, steps, lam)


def test_settings_survive_the_plan_json_round_trip():
    from policykit.plan import plan_json

    for method in EXPECTED:
        plan = _plan(method)
        again = Plan.from_json(plan_json(plan))
        assert again == plan and again.plan_hash == plan.plan_hash
        assert '"lambda"' in plan_json(plan) or plan.stage("closed_form_refinement") is None


def test_a_stage_with_unknown_settings_is_refused():
    from pydantic import ValidationError

    from policykit.realera.settings import Stage

    with pytest.raises(ValidationError, match="unexpected|Extra"):
        Stage(name="closed_form_refinement", settings={"lambda": 0.1, "lamda": 2})
    with pytest.raises(ValidationError, match="unknown stage"):
        Stage(name="polish", settings={})
