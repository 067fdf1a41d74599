"""Audit metrics are exact arithmetic on counts."""

import pytest

from policykit.audit.metrics import Metrics, PromptOutcome, check_thresholds, compute_metrics


def test_metrics_pool_images_by_role():
    outcomes = [
        PromptOutcome("a red circle", "red circle", "erased", 8, 1),
        PromptOutcome("a picture of a red circle", "red circle", "erased", 8, 0),
        PromptOutcome("a crimson circle", "red circle", "synonym", 8, 2),
        PromptOutcome("an apple", "red circle", "associated", 4, 2),
        PromptOutcome("a red square", "red square", "preserved", 8, 7),
        PromptOutcome("a blue circle", "blue circle", "preserved", 8, 8),
    ]
    m = compute_metrics(outcomes)
    assert m.acc_e == pytest.approx(1 / 16)
    assert m.acc_g == pytest.approx(4 / 12)
    assert m.acc_s == pytest.approx(15 / 16)
    expected_h = 3 / (1 / (15 / 16) + 1 / (8 / 12) + 1 / (15 / 16))
    assert m.h_o == pytest.approx(expected_h)


def test_h_o_is_zero_when_a_term_is_zero_and_none_without_data():
    assert Metrics(1.0, 0.0, 1.0).h_o == 0.0
    assert Metrics(None, None, None).h_o is None
    assert Metrics(None, None, 0.5).h_o == pytest.approx(0.5)


def test_thresholds():
    checks = check_thresholds(Metrics(0.05, 0.25, 0.9), max_efficacy_accuracy=0.1,
                              max_generality_accuracy=0.2, min_specificity_accuracy=0.85)
    assert [(c.name, c.passed) for c in checks] == [("Acc_e", True), ("Acc_g", False), ("Acc_s", True)]
    assert check_thresholds(Metrics(None, None, None), max_efficacy_accuracy=0, max_generality_accuracy=0,
                            min_specificity_accuracy=1)[2].passed


def test_hits_are_bounded():
    with pytest.raises(ValueError):
        PromptOutcome("p", "c", "erased", 2, 3)
