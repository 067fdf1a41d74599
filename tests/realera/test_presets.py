"""Every method preset's compiled stages translate into valid RealEra module settings."""

import pytest

from policykit.plan import METHOD_STAGES, compile_plan
from policykit.policy.schema import Policy
from policykit.realera import presets

POLICY = {
    "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
    "metadata": {"name": "p", "version": "1.0.0"}, "base_model": {"id": "builtin:shapes"},
    "erase": [{"concept": "red circle"}], "preserve": [{"concept": "red square"}],
}

EXPECTED = {  # mining, beyond, closed form, noise alignment target
    "realera": (True, True, True, "anchor"),
    "realera-no-bcr": (True, False, True, "anchor"),
    "uce": (False, False, True, None),
    "mace": (False, False, True, "anchor"),
    "esd": (False, False, False, "negative_guidance"),
}


def test_expected_table_covers_every_plan_preset():
    assert set(EXPECTED) == set(METHOD_STAGES)


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_preset_switches(method):
    policy = Policy.model_validate({**POLICY, "training": {"method": method, "lora": {"steps": 7}}})
    switches = presets.stage_switches(compile_plan(policy).stages)
    mining, beyond, closed_form, target = EXPECTED[method]
    assert switches.mine_neighbors is mining and switches.beyond_concept is beyond
    assert (switches.closed_form is not None) is closed_form
    if closed_form:
        assert switches.closed_form.lam > 0 and set(switches.closed_form.targets) <= {"to_k", "to_v"}
        assert switches.closed_form.use_mined_neighbors is mining
    if target is None:
        assert switches.noise_alignment is None
    else:
        assert switches.noise_alignment.target == target and switches.noise_alignment.steps == 7


def test_switches_accept_plan_json_stages():
    policy = Policy.model_validate({**POLICY, "training": {"method": "realera"}})
    stages = [s.model_dump(mode="json") for s in compile_plan(policy).stages]
    switches = presets.stage_switches(stages)
    assert switches.noise_alignment_uses_neighbors and switches.noise_alignment_uses_beyond
