"""The policy language, ``policykit/v1alpha1`` ``ErasurePolicy``, as pydantic models.

These models are the single source of truth: validation, the JSON Schema in
``schemas/`` and ``docs/policy-reference.md`` are all derived from them.
Every field has a description and every number a bound.

Fields of an ``erase`` entry that are left out inherit from ``defaults``;
the compiler (:mod:`policykit.plan`) does that merge, so a policy as written
and a policy as compiled can both be shown to a reviewer.
"""

from __future__ import annotations

import re
import unicodedata
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from policykit.policy.text import clean_phrase

API_VERSION = "policykit/v1alpha1"
KIND = "ErasurePolicy"

# A DNS-1123 label: what an artifact directory, a k8s object and a URL all accept.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# Semantic Versioning 2.0.0 (https://semver.org), without a leading "v".
# Digits are written [0-9], never \d: in Python's re and in pydantic's Rust
# regex \d also matches other scripts' digits ("2.1\uff10.0" with a full-width
# zero), while JSON Schema validators (ECMAScript) read it as ASCII only. The
# version names a directory, so it must be the ASCII text it looks like.
SEMVER_PATTERN = (
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# Concept text is refused if it holds control, bidirectional or invisible
# characters, and kept in NFKC (policykit.policy.text); the bounds apply to
# the normalized text.
_CLEAN = BeforeValidator(clean_phrase)
#: A concept or prompt phrase: one line of printable text, bounded in length.
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), _CLEAN]
#: An anchor may be the empty prompt "" (map the concept to "nothing in particular").
AnchorPhrase = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200), _CLEAN]
#: A prompt template with exactly one ``{}`` where the concept goes.
Template = Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=200), _CLEAN]

MAX_LIST = 10_000  # bound on every list, so hostile input stays bounded in memory


def normalize_concept(text: str) -> str:
    """Canonical form used to compare concepts: NFKC, case-folded, single spaces
    (so full-width ``ｒｅｄ`` and ``Red`` are both ``red``)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Category(str, Enum):
    """What kind of thing a concept is; selects default templates and anchors."""

    object = "object"
    style = "style"
    character = "character"
    person = "person"
    nsfw = "nsfw"
    brand = "brand"


class Method(str, Enum):
    """Which erasure method the stages implement (presets for comparison)."""

    realera = "realera"
    uce = "uce"
    mace = "mace"
    esd = "esd"
    esd_u = "esd-u"
    realera_no_bcr = "realera-no-bcr"
    realera_cf = "realera-cf"


class NeighborSpace(str, Enum):
    """Where neighbor mining perturbs the concept (see docs/method.md)."""

    token = "token"
    text = "text"


class Expectation(str, Enum):
    """What an audit probe expects of the edited model."""

    erased = "erased"
    preserved = "preserved"


def _check_template(value: str) -> str:
    if value.count("{}") != 1:
        raise ValueError("a template needs exactly one '{}' where the concept goes")
    if re.search(r"\{[^}]", value.replace("{}", "")):
        raise ValueError("a template may contain no '{' other than the one '{}'")
    return value


class Metadata(_Strict):
    """Who owns the policy and which version of it this is."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="DNS-style label (lower-case letters, digits, '-'; at most 63 characters); names the artifact directory.")]
    version: Annotated[str, Field(pattern=SEMVER_PATTERN, max_length=128, description="Semantic version of the policy (e.g. 1.2.0); each published artifact is one version.")]
    owner: Annotated[str | None, Field(default=None, max_length=200, description="Team or person accountable for the policy.")] = None
    description: Annotated[str | None, Field(default=None, max_length=4000, description="Why this policy exists, for reviewers.")] = None


class BaseModelRef(_Strict):
    """The model the policy edits."""

    id: Annotated[str, Field(min_length=1, max_length=500, description="`builtin:NAME`, a Hugging Face hub id (`org/name`, resolved offline from the local cache) or a local diffusers directory.")]
    revision: Annotated[str | None, Field(default=None, max_length=200, description="Hub revision (branch, tag or commit); ignored for builtin and local models.")] = None
    sha256: Annotated[str | None, Field(default=None, pattern=SHA256_PATTERN, description="Pin: sha256 over the model's files; apply refuses a model that does not match.")] = None


class Neighbors(_Strict):
    """How wide a neighbourhood around a concept is erased with it (all fields optional: unset ones inherit)."""

    radius: Annotated[float | None, Field(default=None, gt=0, le=2.0, description="Neighbor radius, relative to the norm of the concept's embedding: perturbations up to radius*||t|| are erased with the concept.")] = None
    beyond_radius: Annotated[float | None, Field(default=None, gt=0, le=4.0, description="Outer edge of the beyond-concept shell, relative; samples between radius and beyond_radius are preserved. Default: 2 x radius.")] = None
    samples: Annotated[int | None, Field(default=None, ge=0, le=4096, description="Mined neighbors per template (0 disables mining for this concept).")] = None
    beyond_samples: Annotated[int | None, Field(default=None, ge=0, le=4096, description="Beyond-concept samples per template (0 disables regularization for this concept).")] = None
    min_cosine: Annotated[float | None, Field(default=None, ge=-1.0, le=1.0, description="Reject mined neighbors whose cosine similarity to the concept is below this.")] = None
    space: Annotated[NeighborSpace | None, Field(default=None, description="`text` (default): perturb text-encoder outputs; `token`: perturb input token embeddings.")] = None

    @model_validator(mode="after")
    def _beyond_outside_radius(self) -> "Neighbors":
        if self.radius is not None and self.beyond_radius is not None and self.beyond_radius <= self.radius:
            raise ValueError("beyond_radius must be larger than radius")
        return self


class Defaults(_Strict):
    """Values every `erase` entry inherits unless it sets its own."""

    anchor: Annotated[AnchorPhrase | None, Field(default=None, description="Concept erased concepts are mapped to. Default: by category (object -> \"an object\", person -> \"a person\", ...).")] = None
    strength: Annotated[float, Field(default=1.0, gt=0, le=1.0, description="How strongly a concept is erased, in (0, 1].")] = 1.0
    neighbors: Annotated[Neighbors, Field(default_factory=Neighbors, description="Default neighbor mining settings.")]
    templates: Annotated[list[Template] | None, Field(default=None, max_length=256, description="Prompt templates; default: by category.")] = None

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_template(v) for v in value]


class EraseEntry(_Strict):
    """A concept to erase, with the words that reach it and where it goes."""

    concept: Annotated[Phrase, Field(description="The concept, as it appears in prompts (e.g. \"Mickey Mouse\").")]
    category: Annotated[Category, Field(default=Category.object, description="What kind of concept this is.")] = Category.object
    anchor: Annotated[AnchorPhrase | None, Field(default=None, description="What the concept is replaced by; inherits from defaults.")] = None
    synonyms: Annotated[list[Phrase], Field(default_factory=list, max_length=MAX_LIST, description="Other names for the same concept; erased and audited with it.")]
    associated: Annotated[list[Phrase], Field(default_factory=list, max_length=MAX_LIST, description="Associated concepts that evoke it (\"apple\" for a red circle); erased and audited for generality.")]
    neighbors: Annotated[Neighbors, Field(default_factory=Neighbors, description="Neighbor mining settings; unset fields inherit from defaults.")]
    strength: Annotated[float | None, Field(default=None, gt=0, le=1.0, description="How strongly to erase, in (0, 1]; inherits from defaults.")] = None
    templates: Annotated[list[Template] | None, Field(default=None, max_length=256, description="Prompt templates for this concept; inherits from defaults.")] = None

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_template(v) for v in value]


class PreserveEntry(_Strict):
    """A concept that must survive the edit untouched."""

    concept: Annotated[Phrase, Field(description="The concept to keep.")]
    weight: Annotated[float, Field(default=1.0, gt=0, le=100.0, description="How much keeping it matters, relative to other preserves.")] = 1.0


class Catalog(_Strict):
    """Names the model must keep, preserved together without listing each one as a preserve."""

    names: Annotated[list[Phrase], Field(default_factory=list, max_length=MAX_LIST, description="Names to keep: a brand list, a cast, a roster. Put a long list in a file of its own and `extends:` it. A name the policy erases (or lists as a synonym, associated phrase, preserve or audit probe) is left out of the catalog.")]
    builtin: Annotated[Literal["builtin:emblems"] | None, Field(default=None, description="Also every named entity of this built-in world.")] = None
    mass: Annotated[float, Field(default=2.0, gt=0, le=1000.0, description="The catalog's names together weigh this many times the policy's erase entries (each name: mass x erase entries / names, as a preserve weight), so a long catalog does not drown the erasure.")] = 2.0
    audited: Annotated[int, Field(default=10, ge=0, le=MAX_LIST, description="How many of the names the audit checks as preserves, drawn with the training seed; the edit preserves every name either way.")] = 10

    @model_validator(mode="after")
    def _not_empty(self) -> "Catalog":
        if not self.names and self.builtin is None:
            raise ValueError("a catalog needs names, a builtin world, or both")
        return self


class ClosedForm(_Strict):
    """Stage 3: closed-form cross-attention refinement."""

    enabled: Annotated[bool, Field(default=True, description="Run the stage.")] = True
    lambda_: Annotated[float, Field(default=0.1, gt=0, le=1e6, alias="lambda", description="Ridge weight keeping edited projections near the originals.")] = 0.1
    targets: Annotated[list[Literal["to_k", "to_v"]], Field(default_factory=lambda: ["to_k", "to_v"], min_length=1, max_length=2, description="Cross-attention projections to edit.")]
    vocabulary_prompts: Annotated[int, Field(default=256, ge=0, le=8192, description="Phrases drawn at random from the model's own token vocabulary (seeded) and preserved at every template, so concepts the policy does not list keep their place (0: off). The peer presets (`uce`, `mace`) default to 0, as their authors run them.")] = 256
    vocabulary_weight: Annotated[float, Field(default=2.0, gt=0, le=1000.0, description="Closed-form preserve weight of the vocabulary phrases' rows together, relative to the erase rows' total weight (so it keeps pace as a policy erases more concepts).")] = 2.0

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("targets must not repeat")
        return value


class Lora(_Strict):
    """Stage 4: noise alignment with a LoRA adapter."""

    enabled: Annotated[bool, Field(default=True, description="Run the stage.")] = True
    rank: Annotated[int, Field(default=4, ge=1, le=256, description="LoRA rank.")] = 4
    steps: Annotated[int, Field(default=200, ge=1, le=1_000_000, description="Training steps.")] = 200
    learning_rate: Annotated[float, Field(default=1e-4, gt=0, le=1.0, description="AdamW learning rate.")] = 1e-4
    batch_size: Annotated[int, Field(default=4, ge=1, le=1024, description="Prompts per step.")] = 4
    resolution: Annotated[int | None, Field(default=None, ge=8, le=4096, multiple_of=8, description="Image resolution for training latents; default: the model's native size.")] = None
    preserve_weight: Annotated[float, Field(default=1.0, ge=0, le=1000.0, description="gamma: weight of the preserve term of the loss.")] = 1.0
    attention_weight: Annotated[float, Field(default=0.1, ge=0, le=1000.0, description="gamma_attn: weight of the attention-map term for preserves.")] = 0.1


class Esd(_Strict):
    """The `esd` / `esd-u` presets' fine-tuning (ESD, Gandikota et al. 2023); the defaults are its authors'."""

    iterations: Annotated[int, Field(default=1000, ge=1, le=1_000_000, description="Training iterations (ESD: 1000).")] = 1000
    learning_rate: Annotated[float, Field(default=1e-5, gt=0, le=1.0, description="Adam learning rate (ESD: 1e-5).")] = 1e-5
    negative_guidance: Annotated[float, Field(default=1.0, ge=0, le=100.0, description="Negative guidance of the target (ESD: 1.0).")] = 1.0


class Training(_Strict):
    """How the edit is computed."""

    method: Annotated[Method, Field(default=Method.realera, description="`realera` (default), `realera-cf` (its closed form without noise alignment), or a peer method at its authors' defaults for comparison: `uce`, `mace`, `esd` (ESD-x), `esd-u`; `realera-no-bcr` is an ablation. A setting written in the policy overrides the preset's default (docs/method.md, Presets).")] = Method.realera
    seed: Annotated[int, Field(default=0, ge=0, le=2**32 - 1, description="Seed for mining, latents and training; the same seed gives the same artifact.")] = 0
    closed_form: Annotated[ClosedForm, Field(default_factory=ClosedForm, description="Closed-form refinement settings.")]
    lora: Annotated[Lora, Field(default_factory=Lora, description="LoRA noise alignment settings.")]
    esd: Annotated[Esd, Field(default_factory=Esd, description="ESD fine-tuning settings (`esd`, `esd-u` presets only).")]


class Probe(_Strict):
    """An extra prompt the audit checks, with the outcome expected."""

    prompt: Annotated[Phrase, Field(description="The prompt to generate.")]
    expect: Annotated[Expectation, Field(description="`erased`: the concept must not appear; `preserved`: it must.")]
    concept: Annotated[Phrase | None, Field(default=None, description="The concept the classifier looks for; default: the prompt itself.")] = None


class Thresholds(_Strict):
    """Pass/fail bounds for the audit (accuracies are shares in [0, 1])."""

    max_efficacy_accuracy: Annotated[float, Field(default=0.1, ge=0, le=1, description="Acc_e: at most this share of images for erased prompts may still show the concept.")] = 0.1
    max_generality_accuracy: Annotated[float, Field(default=0.2, ge=0, le=1, description="Acc_g: the same bound for synonyms, associated concepts and neighbor probes.")] = 0.2
    min_specificity_accuracy: Annotated[float, Field(default=0.85, ge=0, le=1, description="Acc_s: at least this share of images for preserved prompts must stay correct.")] = 0.85


class Audit(_Strict):
    """How the edited model is checked before it is published."""

    enabled: Annotated[bool, Field(default=True, description="Run the audit.")] = True
    samples_per_prompt: Annotated[int, Field(default=4, ge=1, le=1000, description="Images generated per prompt.")] = 4
    probes: Annotated[list[Probe], Field(default_factory=list, max_length=MAX_LIST, description="Extra prompts with the expected outcome.")]
    thresholds: Annotated[Thresholds, Field(default_factory=Thresholds, description="Pass/fail bounds.")]
    classifier: Annotated[str | None, Field(default=None, max_length=500, description="Classifier: `builtin:pixel-truth` for builtin:shapes, or a local CLIP directory for real models. Default: by base model.")] = None
    guidance_scales: Annotated[list[Annotated[float, Field(ge=1.0, le=30.0)]], Field(default_factory=lambda: [3.0, 7.5, 9.0], min_length=1, max_length=8, description="Classifier-free guidance scales the audit samples at (each in [1, 30], no repeats); every threshold is judged on the worst scale. The default spans 3 to 9 and includes 7.5, the scale a diffusers pipeline samples at unless told otherwise. Each scale costs samples_per_prompt images per prompt, twice (base and edited model).")]

    @field_validator("guidance_scales")
    @classmethod
    def _distinct_scales(cls, value: list[float]) -> list[float]:
        if len(set(value)) != len(value):
            raise ValueError("guidance_scales must not repeat")
        return value


class Output(_Strict):
    """Where the artifact goes and how it is signed."""

    dir: Annotated[str, Field(default="artifacts", min_length=1, max_length=1000, description="Output directory; artifacts land in DIR/NAME/VERSION.")] = "artifacts"
    signing_key: Annotated[str | None, Field(default=None, max_length=1000, description="Path to a PEM private key (ECDSA P-256) to sign the artifact with.")] = None


class Policy(_Strict):
    """An erasure policy: what to erase from a model, what to keep, and how."""

    api_version: Annotated[Literal["policykit/v1alpha1"], Field(alias="apiVersion", description="Always `policykit/v1alpha1`.")]
    kind: Annotated[Literal["ErasurePolicy"], Field(description="Always `ErasurePolicy`.")]
    extends: Annotated[list[str], Field(default_factory=list, max_length=32, description="Policies this one builds on, as paths relative to this file (merged before this one; see docs/policy-reference.md).")]
    metadata: Annotated[Metadata, Field(description="Name, version, owner, description.")]
    base_model: Annotated[BaseModelRef, Field(description="The model to edit.")]
    defaults: Annotated[Defaults, Field(default_factory=Defaults, description="Values erase entries inherit.")]
    erase: Annotated[list[EraseEntry], Field(min_length=1, max_length=MAX_LIST, description="Concepts to erase.")]
    preserve: Annotated[list[PreserveEntry], Field(default_factory=list, max_length=MAX_LIST, description="Concepts that must survive.")]
    catalog: Annotated[Catalog | None, Field(default=None, description="Names the model must keep, preserved together at a weight that keeps pace with the erasure, without auditing each (see docs/policy-reference.md, \"Catalogs\").")] = None
    training: Annotated[Training, Field(default_factory=Training, description="How the edit is computed.")]
    audit: Annotated[Audit, Field(default_factory=Audit, description="How the edit is checked.")]
    output: Annotated[Output, Field(default_factory=Output, description="Where the artifact goes.")]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=True,
                              title="ErasurePolicy")


#: Where the published JSON Schema of this API version lives (its ``$id``).
SCHEMA_ID = "https://policykit.dev/schemas/erasure-policy.v1alpha1.json"
#: The checked-in copy of the schema, relative to the repository root.
SCHEMA_FILE = "schemas/erasure-policy.v1alpha1.json"


def json_schema() -> dict:
    """The JSON Schema of :class:`Policy` (keys as written in YAML), for editors and CI."""
    schema = Policy.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = f"{KIND} ({API_VERSION})"
    return schema


def json_schema_text() -> str:
    """:func:`json_schema` as deterministic text: sorted keys, 2-space indent, final newline."""
    import json

    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
