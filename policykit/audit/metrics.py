"""Erasure metrics (docs/method.md, "Measuring it").

- efficacy ``Acc_e``: share of images for erased prompts still showing the
  concept (lower is better);
- generality ``Acc_g``: the same for synonyms, associated concepts, mined
  neighbors and probes expected erased (lower is better);
- specificity ``Acc_s``: share of images for preserved and unrelated prompts
  still correct (higher is better);
- ``H_o``: harmonic mean of ``1 - Acc_e``, ``1 - Acc_g`` and ``Acc_s``.

Pure arithmetic on counts, so it is tested exactly and shared by the audit
and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

Role = Literal["erased", "synonym", "associated", "neighbor", "probe-erased",
               "preserved", "unrelated", "probe-preserved"]

EFFICACY_ROLES: frozenset[str] = frozenset({"erased"})
GENERALITY_ROLES: frozenset[str] = frozenset({"synonym", "associated", "neighbor", "probe-erased"})
SPECIFICITY_ROLES: frozenset[str] = frozenset({"preserved", "unrelated", "probe-preserved"})


@dataclass(frozen=True)
class PromptOutcome:
    """How the images of one prompt were classified.

    ``hits`` counts images showing ``concept`` (for erase roles: a failure of
    the edit; for preserve roles: a success).
    """

    prompt: str
    concept: str
    role: Role
    images: int
    hits: int

    def __post_init__(self) -> None:
        if not 0 <= self.hits <= self.images:
            raise ValueError(f"hits ({self.hits}) must be within 0..images ({self.images})")

    @property
    def rate(self) -> float:
        """Share of this prompt's images that show its concept."""
        return self.hits / self.images if self.images else 0.0


@dataclass(frozen=True)
class Metrics:
    """The four numbers of an audit (None where no prompt had that role)."""

    acc_e: float | None
    acc_g: float | None
    acc_s: float | None

    @property
    def h_o(self) -> float | None:
        """Harmonic mean of 1-Acc_e, 1-Acc_g and Acc_s over the defined ones."""
        terms = [v for v in (None if self.acc_e is None else 1 - self.acc_e,
                             None if self.acc_g is None else 1 - self.acc_g,
                             self.acc_s) if v is not None]
        if not terms:
            return None
        if any(t <= 0 for t in terms):
            return 0.0
        return len(terms) / sum(1 / t for t in terms)

    def to_dict(self) -> dict:
        """JSON-ready numbers."""
        return {"acc_e": self.acc_e, "acc_g": self.acc_g, "acc_s": self.acc_s, "h_o": self.h_o}


def _share(outcomes: list[PromptOutcome], roles: frozenset[str]) -> float | None:
    chosen = [o for o in outcomes if o.role in roles]
    total = sum(o.images for o in chosen)
    return sum(o.hits for o in chosen) / total if total else None


def compute_metrics(outcomes: Iterable[PromptOutcome]) -> Metrics:
    """Acc_e, Acc_g, Acc_s pooled over images (each image weighs the same)."""
    items = list(outcomes)
    return Metrics(_share(items, EFFICACY_ROLES), _share(items, GENERALITY_ROLES),
                   _share(items, SPECIFICITY_ROLES))


@dataclass(frozen=True)
class ThresholdCheck:
    """One audit threshold and whether the measured value met it.

    ``setting`` is the policy key (``audit.thresholds.<setting>``); ``guidance`` the guidance scale the
    measured value comes from (the worst one, when several were audited).
    """

    name: str
    measured: float | None
    bound: float
    kind: Literal["max", "min"]
    setting: str = ""
    guidance: float | None = None

    @property
    def passed(self) -> bool:
        """A metric with no prompts cannot fail its bound (it is reported as n/a)."""
        if self.measured is None:
            return True
        return self.measured <= self.bound if self.kind == "max" else self.measured >= self.bound

    def describe(self) -> str:
        """``Acc_s 56.2% at guidance 9 is below audit.thresholds.min_specificity_accuracy 85.0%`` (or ``meets``)."""
        if self.measured is None:
            return f"{self.name} n/a (no prompts of its kind)"
        where = "" if self.guidance is None else f" at guidance {self.guidance:g}"
        if self.passed:
            verb = "meets"
        else:
            verb = "is above" if self.kind == "max" else "is below"
        bound = f"audit.thresholds.{self.setting} {100 * self.bound:.1f}%" if self.setting else \
            f"the {self.kind} {100 * self.bound:.1f}%"
        return f"{self.name} {100 * self.measured:.1f}%{where} {verb} {bound}"


#: metric name -> (policy setting, kind): the bounds of ``audit.thresholds``.
THRESHOLDS: dict[str, tuple[str, Literal["max", "min"]]] = {
    "Acc_e": ("max_efficacy_accuracy", "max"),
    "Acc_g": ("max_generality_accuracy", "max"),
    "Acc_s": ("min_specificity_accuracy", "min"),
}


def check_thresholds(metrics: Metrics, *, max_efficacy_accuracy: float, max_generality_accuracy: float,
                     min_specificity_accuracy: float) -> list[ThresholdCheck]:
    """The policy's pass/fail bounds applied to measured metrics."""
    return judge_scales({None: metrics}, max_efficacy_accuracy=max_efficacy_accuracy,
                        max_generality_accuracy=max_generality_accuracy,
                        min_specificity_accuracy=min_specificity_accuracy)


def judge_scales(by_guidance: dict[float | None, Metrics], **bounds: float) -> list[ThresholdCheck]:
    """The policy's bounds applied to the worst value of each metric over the guidance scales audited.

    ``by_guidance``: guidance scale -> metrics measured there. Efficacy and generality are worst at their
    highest value, specificity at its lowest; a tie goes to the first scale listed. Each check names
    the scale it was decided at.
    """
    checks = []
    for name, (setting, kind) in THRESHOLDS.items():
        key = name.lower()
        measured = [(g, getattr(m, key)) for g, m in by_guidance.items() if getattr(m, key) is not None]
        if measured:
            pick = max if kind == "max" else min
            guidance, value = pick(measured, key=lambda item: item[1])
        else:
            guidance, value = None, None
        checks.append(ThresholdCheck(name, value, bounds[setting], kind, setting, guidance))
    return checks


def worst_metrics(metrics: Iterable[Metrics]) -> Metrics:
    """The worst of each number over several measurements (highest Acc_e and Acc_g, lowest Acc_s)."""
    items = list(metrics)

    def pick(key: str, choose) -> float | None:
        values = [getattr(m, key) for m in items if getattr(m, key) is not None]
        return choose(values) if values else None

    return Metrics(pick("acc_e", max), pick("acc_g", max), pick("acc_s", min))
