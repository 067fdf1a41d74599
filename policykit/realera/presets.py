"""Method presets, seen from the math: which RealEra pieces each compiled stage switches on.

The compiler (:mod:`policykit.plan`) is the one place that decides which
stages a preset runs (``METHOD_STAGES``) and with which settings; this module
does not repeat that table. It reads a plan's stages and turns their settings
into the inputs of the modules here, so the stage runner has no translation
of its own:

=================  ======  ====  ===========  =============  ==============================
preset             mining  BCR   closed form  noise align.   NA target
=================  ======  ====  ===========  =============  ==============================
realera            yes     yes   yes          yes            anchor
realera-no-bcr     yes     no    yes          yes            anchor
uce                no      no    yes          no             -
mace               no      no    yes          yes            anchor
esd                no      no    no           yes            negative_guidance (ESD)
=================  ======  ====  ===========  =============  ==============================

(the table is ``plan.METHOD_STAGES``; a test keeps the two in sync.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from policykit.realera.noise_alignment import NoiseAlignmentConfig

# Stage names as the compiled plan spells them.
MINE_NEIGHBORS = "mine_neighbors"
BEYOND_CONCEPT_REGULARIZATION = "beyond_concept_regularization"
CLOSED_FORM_REFINEMENT = "closed_form_refinement"
NOISE_ALIGNMENT = "noise_alignment"


@dataclass(frozen=True)
class ClosedFormSettings:
    """Inputs of :func:`policykit.realera.closed_form.closed_form_refine` from a plan stage."""

    lam: float
    targets: tuple[str, ...]
    use_mined_neighbors: bool
    use_beyond_concept: bool


@dataclass(frozen=True)
class StageSwitches:
    """Which pieces of the method a plan runs."""

    mine_neighbors: bool
    beyond_concept: bool
    closed_form: ClosedFormSettings | None
    noise_alignment: NoiseAlignmentConfig | None
    #: Training-latent resolution for noise alignment (None: the model's native size).
    resolution: int | None = None
    #: NA conditions on mined neighbors / shell samples too (not only CFR).
    noise_alignment_uses_neighbors: bool = False
    noise_alignment_uses_beyond: bool = False


def closed_form_settings(settings: Mapping[str, Any]) -> ClosedFormSettings:
    """The closed-form stage's settings as typed values; ``KeyError`` names a missing key."""
    return ClosedFormSettings(lam=float(settings["lambda"]), targets=tuple(settings["targets"]),
                              use_mined_neighbors=bool(settings.get("use_mined_neighbors", False)),
                              use_beyond_concept=bool(settings.get("use_beyond_concept", False)))


def noise_alignment_config(settings: Mapping[str, Any], progress: bool = True) -> NoiseAlignmentConfig:
    """A validated :class:`NoiseAlignmentConfig` from the noise-alignment stage's settings."""
    return NoiseAlignmentConfig(
        rank=int(settings["rank"]), steps=int(settings["steps"]), learning_rate=float(settings["learning_rate"]),
        batch_size=int(settings["batch_size"]), preserve_weight=float(settings["preserve_weight"]),
        attention_weight=float(settings["attention_weight"]), seed=int(settings["seed"]),
        target=str(settings.get("target", "anchor")), guidance=float(settings.get("guidance", 1.0)),
        progress=progress)


def stage_switches(stages: Sequence[Any]) -> StageSwitches:
    """What to run for a plan's ``stages`` (``plan.Stage`` objects or ``{"name", "settings"}`` dicts)."""
    by_name = {}
    for stage in stages:
        name = stage["name"] if isinstance(stage, Mapping) else stage.name
        settings = stage["settings"] if isinstance(stage, Mapping) else stage.settings
        by_name[name] = dict(settings)
    cfr = by_name.get(CLOSED_FORM_REFINEMENT)
    na = by_name.get(NOISE_ALIGNMENT)
    return StageSwitches(
        mine_neighbors=MINE_NEIGHBORS in by_name,
        beyond_concept=BEYOND_CONCEPT_REGULARIZATION in by_name,
        closed_form=None if cfr is None else closed_form_settings(cfr),
        noise_alignment=None if na is None else noise_alignment_config(na),
        resolution=None if na is None else na.get("resolution"),
        noise_alignment_uses_neighbors=bool(na and na.get("use_mined_neighbors")),
        noise_alignment_uses_beyond=bool(na and na.get("use_beyond_concept")),
    )
