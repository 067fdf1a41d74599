"""One typed settings object per stage: built once by the compiler, carried in the plan, read as-is.

As peft's ``LoraConfig`` is validated when built, saved with the adapter and
read by the tuner, each stage of a compiled plan carries one frozen pydantic
object here. :func:`policykit.plan.plan_stages` builds it from the policy
schema (and the method preset's defaults); the stage module's ``run`` reads
its fields, nothing translates them on the way. The objects serialise to the
plan's JSON (``lambda`` keeps its policy spelling) and load back from it.

Torch-free: ``policykit plan`` and ``validate`` import this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Stage names, in the order they run.
MINE_NEIGHBORS = "mine_neighbors"
BEYOND_CONCEPT_REGULARIZATION = "beyond_concept_regularization"
CLOSED_FORM_REFINEMENT = "closed_form_refinement"
NOISE_ALIGNMENT = "noise_alignment"
ESD_FINETUNE = "esd_finetune"
MACE_LORA = "mace_lora"
AUDIT = "audit"

#: Which rows the closed form is built from (docs/method.md, "Presets"): policykit's own position
#: rules, UCE's (``edit_model``) or MACE's (``prepare_k_v``).
ROW_RULES = ("realera", "uce", "mace")
TARGETS = ("anchor", "negative_guidance")
TIMESTEP_SAMPLING = ("uniform", "importance")


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON data, as the plan stores them."""
        return self.model_dump(mode="json")


class MiningSettings(_Settings):
    """Stage 1, neighbor-concept mining. Per-concept radius and samples live in the plan's erase entries."""

    seed: int = 0


class ShellSettings(_Settings):
    """Stage 2, the beyond-concept shell. Per-concept beyond radius and samples live in the erase entries."""

    seed: int = 0


class ClosedFormSettings(_Settings):
    """Stage 3, closed-form cross-attention refinement (:mod:`policykit.realera.closed_form`)."""

    #: Ridge weight; 0 only where the rows alone make the system solvable (MACE's people and styles).
    lambda_: float = Field(0.1, alias="lambda", ge=0)
    targets: tuple[Literal["to_k", "to_v"], ...] = ("to_k", "to_v")
    #: Position rules that build the rows: ``realera`` (policykit's, :mod:`.prompts`), ``uce`` or ``mace``.
    rows: Literal["realera", "uce", "mace"] = "realera"
    #: Weight of every erase row (UCE's ``erase_scale``; policykit's own rows use the concept's strength too).
    erase_scale: float = Field(1.0, gt=0)
    #: Weight of every preserve row in the ``uce`` and ``mace`` rules (their ``preserve_scale``);
    #: None under ``realera``, whose preserves carry their own weights.
    preserve_scale: float | None = Field(None, ge=0)
    use_mined_neighbors: bool = False
    use_beyond_concept: bool = False
    #: Phrases of the model's own vocabulary preserved with every plan (:func:`.encoding.vocabulary_phrases`),
    #: their rows weighing ``vocabulary_weight`` times the erase rows together; 0 under the peer presets.
    vocabulary_prompts: int = Field(0, ge=0)
    vocabulary_weight: float = Field(2.0, gt=0)
    seed: int = 0


class NoiseAlignmentSettings(_Settings):
    """Stage 4, LoRA noise alignment (:mod:`policykit.realera.noise_alignment`)."""

    rank: int = Field(4, ge=1)
    #: None: equal to ``rank`` (LoRA scale 1).
    lora_alpha: float | None = Field(None, gt=0)
    steps: int = Field(200, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(4, ge=1)
    #: Training-latent resolution (None: the model's native size).
    resolution: int | None = None
    #: alpha: multiplies each erase sample's own weight.
    erase_weight: float = Field(1.0, ge=0)
    preserve_weight: float = Field(1.0, ge=0)
    attention_weight: float = Field(0.1, ge=0)
    #: ``anchor``: the anchor's prediction; ``negative_guidance``: ESD's target with ``guidance``.
    target: Literal["anchor", "negative_guidance"] = "anchor"
    guidance: float = 1.0
    timesteps: Literal["uniform", "importance"] = "uniform"
    #: Also adapt ``to_q`` and ``to_out.0`` of the cross-attention layers.
    train_query_and_out: bool = False
    seed: int = 0
    use_mined_neighbors: bool = False
    use_beyond_concept: bool = False


class MaceLoraSettings(_Settings):
    """MACE's LoRA stage (:mod:`policykit.realera.mace_lora`): one LoRA per concept trained to empty the
    concept's cross-attention, then all fused by a closed form. Defaults: MACE's object config."""

    rank: int = Field(1, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    steps: int = Field(50, ge=1)
    batch_size: int = Field(1, ge=1)
    #: ``mace``: MACE's importance sampling, ``p(t) ~ sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400))``.
    timesteps: Literal["uniform", "mace"] = "mace"
    #: Images the base model draws per concept (MACE: 8) and the steps it draws them with (MACE: 30).
    images_per_concept: int = Field(8, ge=1)
    image_steps: int = Field(30, ge=1)
    image_guidance: float = 7.5
    resolution: int | None = None
    #: The fusion's ridge weight (MACE's lambda) and preserve weight (``fuse_preserve_scale * preserve_weight``).
    lambda_: float = Field(1e3, alias="lambda", ge=0)
    fuse_preserve_scale: float = Field(0.0, ge=0)
    seed: int = 0


class EsdSettings(_Settings):
    """ESD (Gandikota et al., ICCV 2023) fine-tuning (:mod:`policykit.realera.esd`), at its authors' defaults."""

    #: ``xattn`` (ESD-x: the cross-attention layers) or ``noxattn`` (ESD-u: everything but them).
    train: Literal["xattn", "noxattn"] = "xattn"
    iterations: int = Field(1000, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    negative_guidance: float = 1.0
    #: Guidance of the partial sampling that makes each iteration's latent.
    start_guidance: float = 3.0
    ddim_steps: int = Field(50, ge=2)
    #: Latent resolution (None: the model's native size).
    resolution: int | None = None
    seed: int = 0


class AuditSettings(_Settings):
    """The audit ``apply`` runs after the edit (:mod:`policykit.audit.run`)."""

    samples_per_prompt: int = Field(4, ge=1)
    classifier: str | None = None
    thresholds: dict[str, float] = Field(default_factory=dict)
    seed: int = 0
    guidance_scales: tuple[float, ...] = ()
    #: None: the model's own sampling steps (plans compiled before the audit recorded them).
    steps: int | None = Field(None, ge=1)


SETTINGS_BY_STAGE: dict[str, type[_Settings]] = {
    MINE_NEIGHBORS: MiningSettings,
    BEYOND_CONCEPT_REGULARIZATION: ShellSettings,
    CLOSED_FORM_REFINEMENT: ClosedFormSettings,
    NOISE_ALIGNMENT: NoiseAlignmentSettings,
    ESD_FINETUNE: EsdSettings,
    MACE_LORA: MaceLoraSettings,
    AUDIT: AuditSettings,
}

StageSettings = Union[MiningSettings, ShellSettings, ClosedFormSettings, NoiseAlignmentSettings, EsdSettings,
                      MaceLoraSettings, AuditSettings]


class Stage(BaseModel):
    """One stage of a plan: its name and its typed settings (the class is chosen by the name)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    settings: Annotated[StageSettings, Field(union_mode="left_to_right")]

    @model_validator(mode="before")
    @classmethod
    def _typed_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("settings"), dict):
            kind = SETTINGS_BY_STAGE.get(data.get("name"))
            if kind is None:
                raise ValueError(f"unknown stage {data.get('name')!r} (known: {', '.join(SETTINGS_BY_STAGE)})")
            data = {**data, "settings": kind.model_validate(data["settings"])}
        return data
