"""Audit report renderings: self-contained HTML, escaped input, PR-sized Markdown, JSON."""

import io
import json
import re

from PIL import Image

from policykit.audit.metrics import PromptOutcome, compute_metrics, judge_scales
from policykit.audit.report import AuditResult, PromptImages, ScaleResult, render_html, render_json, render_markdown


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _result(hostile="<script>alert(1)</script>"):
    pairs = [
        (PromptOutcome("a red circle", "red circle", "erased", 4, 4), PromptOutcome("a red circle", "red circle", "erased", 4, 0)),
        (PromptOutcome("an apple", "red circle", "associated", 4, 3), PromptOutcome("an apple", "red circle", "associated", 4, 1)),
        (PromptOutcome(hostile, "blue circle", "preserved", 4, 4), PromptOutcome(hostile, "blue circle", "preserved", 4, 4)),
    ]
    before = compute_metrics(b for b, _ in pairs)
    after = compute_metrics(a for _, a in pairs)
    checks = judge_scales({7.5: after}, max_efficacy_accuracy=0.1, max_generality_accuracy=0.2,
                          min_specificity_accuracy=0.85)
    scale = ScaleResult(7.5, before, after, [PromptImages(b, a, _png("red"), _png("gray")) for b, a in pairs])
    return AuditResult("demo", "1.0.0", [scale], checks,
                       provenance={"policy sha256": "ab" * 32, "note": hostile},
                       coverage={"red circle": [("crimson", 0.12)]}, limitations=["tiny world"])


def test_html_is_self_contained_and_escapes_policy_text():
    page = render_html(_result())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from a network
    assert page.count("data:image/png;base64,") == 6
    assert "FAILED" in page  # Acc_g is 25% > 20%


def test_markdown_has_a_verdict_line_first_and_thresholds():
    md = render_markdown(_result())
    first = md.splitlines()[0]
    assert first.startswith("**policykit audit FAILED**") and "Acc_g 25.0%" in first
    assert "| Acc_g | 75.0% | 25.0% | 7.5 | <= 20.0% | **FAIL** |" in md


def test_json_round_trips_with_format_version():
    doc = json.loads(render_json(_result()))
    assert doc["format_version"] == 2 and doc["verdict"] == "failed"
    assert doc["metrics"]["after"]["acc_e"] == 0.0
    assert [t["passed"] for t in doc["thresholds"]] == [True, False, True]
    assert doc["scales"][0]["guidance"] == 7.5 and doc["scales"][0]["prompts"][1] == {"prompt": "an apple", "concept": "red circle", "role": "associated",
                                 "images": 4, "hits_before": 3, "hits_after": 1}


def test_markdown_escapes_html_in_policy_text():
    md = render_markdown(_result())
    assert "<script>" not in md and "&lt;script&gt;" in md
