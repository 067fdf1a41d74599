"""Audit reports: one result, three renderings (HTML, Markdown, JSON).

``report.html`` is one self-contained file: images are embedded as data URIs,
charts are inline SVG, nothing is fetched from a network. Every string that
comes from a policy (concept names, prompts, descriptions) is untrusted and
escaped. ``report.md`` fits a pull-request comment; ``report.json`` carries a
``format_version`` for machines.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from typing import Any

from policykit.audit.metrics import Metrics, PromptOutcome, ThresholdCheck, worst_metrics

#: 2: one section per guidance scale (``scales``); ``metrics`` and ``thresholds`` are the worst over them.
REPORT_FORMAT_VERSION = 2

#: The guidance scale a diffusers pipeline samples at when the caller does not say
#: (``StableDiffusionPipeline.__call__``): what the artifact's users get by default.
DIFFUSERS_DEFAULT_GUIDANCE = 7.5

ROLE_TITLES = {
    "erased": "Erased concept",
    "synonym": "Synonyms",
    "associated": "Associated concepts",
    "neighbor": "Mined neighbours",
    "probe-erased": "Probes expected erased",
    "preserved": "Preserved concepts",
    "unrelated": "Unrelated concepts",
    "probe-preserved": "Probes expected preserved",
}


@dataclass(frozen=True)
class PromptImages:
    """One prompt's outcome before and after the edit, with its image grids (PNG bytes)."""

    before: PromptOutcome
    after: PromptOutcome
    grid_before_png: bytes | None = None
    grid_after_png: bytes | None = None

    @property
    def prompt(self) -> str:
        """The prompt text."""
        return self.after.prompt


@dataclass(frozen=True)
class ScaleResult:
    """The audit at one classifier-free guidance scale: metrics of both models and every prompt."""

    guidance: float | None
    metrics_before: Metrics
    metrics_after: Metrics
    prompts: list[PromptImages]


@dataclass
class AuditResult:
    """Everything a report shows. Built by the audit, rendered here.

    ``scales``: one result per guidance scale audited; ``thresholds``: the policy's bounds checked on
    the worst scale of each metric (:func:`~policykit.audit.metrics.judge_scales`).
    """

    policy_name: str
    policy_version: str
    scales: list[ScaleResult]
    thresholds: list[ThresholdCheck]
    provenance: dict[str, str] = field(default_factory=dict)
    coverage: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    graph_svg: str | None = None
    limitations: list[str] = field(default_factory=list)
    steps: int | None = None

    @property
    def metrics_before(self) -> Metrics:
        """The base model's worst numbers over the scales."""
        return worst_metrics(s.metrics_before for s in self.scales)

    @property
    def metrics_after(self) -> Metrics:
        """The edited model's worst numbers over the scales (what the thresholds judge)."""
        return worst_metrics(s.metrics_after for s in self.scales)

    @property
    def passed(self) -> bool:
        """True when every threshold is met."""
        return all(t.passed for t in self.thresholds)

    @property
    def verdict(self) -> str:
        """``passed`` or ``failed``."""
        return "passed" if self.passed else "failed"

    @property
    def guidance_scales(self) -> list[float | None]:
        """The guidance scales audited, in order."""
        return [s.guidance for s in self.scales]

    def shown_scales(self) -> list[ScaleResult]:
        """The scales whose images the HTML report embeds: the one nearest the diffusers default
        (what users get) and every scale a failed threshold was decided at (what went wrong).
        Every scale's numbers are reported; only images are limited, to keep the report small."""
        if not self.scales:
            return []
        nearest = min(self.scales, key=lambda s: abs((s.guidance or 0.0) - DIFFUSERS_DEFAULT_GUIDANCE))
        failed = {t.guidance for t in self.thresholds if not t.passed}
        return [s for s in self.scales if s is nearest or s.guidance in failed]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _g(value: float | None) -> str:
    return "default" if value is None else f"{value:g}"


def _prompts_json(prompts: list[PromptImages]) -> list[dict]:
    return [{"prompt": p.prompt, "concept": p.after.concept, "role": p.after.role, "images": p.after.images,
             "hits_before": p.before.hits, "hits_after": p.after.hits} for p in prompts]


def render_json(result: AuditResult) -> str:
    """``report.json``: the worst-case numbers and thresholds, then every scale's numbers and prompts."""
    doc: dict[str, Any] = {
        "format_version": REPORT_FORMAT_VERSION,
        "policy": {"name": result.policy_name, "version": result.policy_version},
        "verdict": result.verdict,
        "judged_on": "the worst guidance scale of each metric",
        "steps": result.steps,
        "metrics": {"before": result.metrics_before.to_dict(), "after": result.metrics_after.to_dict()},
        "thresholds": [{"name": t.name, "setting": t.setting, "kind": t.kind, "bound": t.bound,
                        "measured": t.measured, "guidance": t.guidance, "passed": t.passed}
                       for t in result.thresholds],
        "scales": [{"guidance": s.guidance, "metrics": {"before": s.metrics_before.to_dict(),
                                                        "after": s.metrics_after.to_dict()},
                    "prompts": _prompts_json(s.prompts)} for s in result.scales],
        "provenance": result.provenance,
        "coverage": {c: [{"phrase": w, "distance": d} for w, d in ws] for c, ws in result.coverage.items()},
        "limitations": result.limitations,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _md_cell(text: str) -> str:
    # Policy text is untrusted: no raw HTML and no table breaks in a PR comment.
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _scales_text(result: AuditResult) -> str:
    return ", ".join(_g(g) for g in result.guidance_scales)


def render_markdown(result: AuditResult) -> str:
    """``report.md``: a verdict line, then the thresholds on the worst scale and every scale's numbers."""
    icon = "PASSED" if result.passed else "FAILED"
    m_b, m_a = result.metrics_before, result.metrics_after
    lines = [
        f"**policykit audit {icon}**: `{_md_cell(result.policy_name)}` {_md_cell(result.policy_version)} "
        f"(worst over guidance {_scales_text(result)}: Acc_e {_pct(m_a.acc_e)}, Acc_g {_pct(m_a.acc_g)}, "
        f"Acc_s {_pct(m_a.acc_s)})",
        "",
        "| metric | base model | edited model | at guidance | bound | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    before = m_b.to_dict()
    for t in result.thresholds:
        sign = "<=" if t.kind == "max" else ">="
        lines.append(f"| {t.name} | {_pct(before[t.name.lower()])} | {_pct(t.measured)} | {_g(t.guidance)} | "
                     f"{sign} {_pct(t.bound)} | {'pass' if t.passed else '**FAIL**'} |")
    lines.append(f"| H_o | {_pct(m_b.h_o)} | {_pct(m_a.h_o)} | | | |")
    lines += ["", "Base -> edited model at each guidance scale:", "",
              "| guidance | Acc_e | Acc_g | Acc_s | H_o |", "| --- | --- | --- | --- | --- |"]
    for s in result.scales:
        b, a = s.metrics_before, s.metrics_after
        lines.append(f"| {_g(s.guidance)} | " + " | ".join(
            f"{_pct(getattr(b, k))} -> {_pct(getattr(a, k))}" for k in ("acc_e", "acc_g", "acc_s", "h_o")) + " |")
    for s in result.scales:
        lines += ["", f"<details><summary>Per prompt, guidance {_g(s.guidance)}</summary>", "",
                  "| role | concept | prompt | shows concept: before | after |", "| --- | --- | --- | --- | --- |"]
        for p in s.prompts:
            lines.append(f"| {p.after.role} | {_md_cell(p.after.concept)} | {_md_cell(p.prompt)} | "
                         f"{p.before.hits}/{p.before.images} | {p.after.hits}/{p.after.images} |")
        lines += ["", "</details>"]
    if result.limitations:
        lines += ["", "Limitations:"] + [f"- {_md_cell(x)}" for x in result.limitations]
    return "\n".join(lines) + "\n"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return "<span class=na>no image</span>"
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _bar_chart(metrics_before: Metrics, metrics_after: Metrics) -> str:
    """Inline SVG: each metric before (grey) and after (blue), 0-100%."""
    rows = [("Acc_e", metrics_before.acc_e, metrics_after.acc_e),
            ("Acc_g", metrics_before.acc_g, metrics_after.acc_g),
            ("Acc_s", metrics_before.acc_s, metrics_after.acc_s),
            ("H_o", metrics_before.h_o, metrics_after.h_o)]
    width, bar_h, label_w = 360, 12, 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + label_w + 60}" height="{len(rows) * 36 + 8}" '
             'role="img" aria-label="metrics before and after">']
    for i, (name, before, after) in enumerate(rows):
        y = 8 + i * 36
        parts.append(f'<text x="0" y="{y + 18}" font-size="13">{name}</text>')
        for j, (value, colour) in enumerate(((before, "#9aa0a6"), (after, "#1a73e8"))):
            w = 0 if value is None else width * value
            parts.append(f'<rect x="{label_w}" y="{y + j * (bar_h + 2)}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + j * (bar_h + 2) + 10}" font-size="10">{_pct(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#202124}
h1{margin-bottom:.2rem} .verdict{font-size:1.4rem;font-weight:700;padding:.4rem .8rem;border-radius:6px;display:inline-block}
.passed{background:#e6f4ea;color:#137333} .failed{background:#fce8e6;color:#a50e0e}
table{border-collapse:collapse;margin:.6rem 0} td,th{border:1px solid #dadce0;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f4} .fail{color:#a50e0e;font-weight:700} .pass{color:#137333}
img{image-rendering:pixelated;max-width:100%;border:1px solid #dadce0} .na{color:#5f6368}
.grid td{text-align:center} code{background:#f1f3f4;padding:0 .2rem}
"""


def render_html(result: AuditResult) -> str:
    """``report.html``: self-contained (no network), every policy string escaped."""
    e = html.escape
    m_b = result.metrics_before.to_dict()
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           f"<title>policykit audit: {e(result.policy_name)} {e(result.policy_version)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Audit: {e(result.policy_name)} {e(result.policy_version)}</h1>",
           f'<p class="verdict {result.verdict}">{result.verdict.upper()}</p>',
           f"<p>Sampled at guidance {e(_scales_text(result))}"
           + (f", {result.steps} steps" if result.steps else "")
           + "; each threshold is judged on the worst scale.</p>",
           "<h2>Thresholds</h2><table><tr><th>metric</th><th>base model</th><th>edited model</th>"
           "<th>at guidance</th><th>bound</th><th>result</th></tr>"]
    for t in result.thresholds:
        sign = "&le;" if t.kind == "max" else "&ge;"
        status = '<span class=pass>pass</span>' if t.passed else '<span class=fail>FAIL</span>'
        out.append(f"<tr><td>{t.name}</td><td>{_pct(m_b[t.name.lower()])}</td><td>{_pct(t.measured)}</td>"
                   f"<td>{_g(t.guidance)}</td><td>{sign} {_pct(t.bound)} <small>({e(t.setting)})</small></td>"
                   f"<td>{status}</td></tr>")
    out.append(f"<tr><td>H_o</td><td>{_pct(result.metrics_before.h_o)}</td>"
               f"<td>{_pct(result.metrics_after.h_o)}</td><td></td><td></td><td></td></tr></table>")

    out.append("<h2>Metrics at each guidance scale</h2><p>grey: base model, blue: edited model.</p>")
    for s in result.scales:
        out.append(f"<h3>guidance {_g(s.guidance)}</h3>" + _bar_chart(s.metrics_before, s.metrics_after))

    out.append("<h2>Provenance</h2><table>")
    for key, value in result.provenance.items():
        out.append(f"<tr><th>{e(key)}</th><td><code>{e(str(value))}</code></td></tr>")
    out.append("</table>")

    shown = result.shown_scales()
    out.append("<h2>Images</h2><p>At guidance " + e(", ".join(_g(s.guidance) for s in shown))
               + " (the scale nearest the diffusers default, and any scale a threshold failed at); "
               "report.json and report.md count every scale's images.</p>")
    for scale in shown:
        for role, title in ROLE_TITLES.items():
            group = [p for p in scale.prompts if p.after.role == role]
            if not group:
                continue
            out.append(f"<h3>{e(title)}, guidance {_g(scale.guidance)}</h3><table class=grid><tr><th>prompt</th>"
                       "<th>base model</th><th>edited model</th><th>shows concept (before &rarr; after)</th></tr>")
            for p in group:
                out.append(f"<tr><td>{e(p.prompt)}<br><small>concept: {e(p.after.concept)}</small></td>"
                           f"<td>{_img(p.grid_before_png, 'before: ' + p.prompt)}</td>"
                           f"<td>{_img(p.grid_after_png, 'after: ' + p.prompt)}</td>"
                           f"<td>{p.before.hits}/{p.before.images} &rarr; {p.after.hits}/{p.after.images}</td></tr>")
            out.append("</table>")

    if result.coverage:
        out.append("<h2>What each radius covers</h2><p>Vocabulary tokens and policy phrases whose embeddings "
                   "fall inside the concept's neighbor radius (relative distance).</p><table>")
        for concept, words in result.coverage.items():
            listed = ", ".join(f"{e(w)} ({d:.2f})" for w, d in words) or "<span class=na>nothing</span>"
            out.append(f"<tr><th>{e(concept)}</th><td>{listed}</td></tr>")
        out.append("</table>")
    if result.graph_svg:
        # The SVG is produced by policykit.graph, which escapes its labels.
        out.append("<h2>Concept graph</h2>" + result.graph_svg)
    if result.limitations:
        out.append("<h2>Limitations</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in result.limitations) + "</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)
