"""Is RealEra better than the methods it extends? Erasure quality on builtin:shapes.

A fixed suite of erasure tasks, each run with the same prompts, seeds and
pixel-truth classifier for the base model and every method preset: the peer
methods at their authors' defaults (``uce``, ``mace``, ``esd`` = ESD-x,
``esd-u``; docs/method.md, "Presets") and RealEra with its ablations
(``realera-cf``, ``realera-no-bcr``, ``realera``), then a sweep of RealEra's
neighbour radius and beyond radius. For each method and task it
reports Acc_e, Acc_g, Acc_s, H_o (docs/method.md, "Measuring it") and the
wall time of the edit.

    python benchmarks/quality.py                        # everything, 2 worker processes
    python benchmarks/quality.py --tasks pair,associated --methods uce,realera
    python benchmarks/quality.py --no-sweep --jobs 1
    python benchmarks/quality.py --report-only          # tables from the results already on disk

Every task lists, besides the policy's own phrases, *held-out* prompts the
policy never names: other phrases of the erased concept (expected erased) and
other concepts of the world (expected preserved). The listed phrases are
erased by every method directly; the held-out ones show whether the edit
erased a region or only a list, and what it cost elsewhere.

One result per (task, method, settings, engine version) is stored under
``--results`` (default ``benchmarks/results/quality``, committed with the
code) as soon as it is measured, so an interrupted run resumes where it stopped; ``--fresh`` measures
again. Each result records the engine version and the git commit it was
measured at; results of another engine version are never reused or shown, and
the report names the commits its results come from. The
tables are printed and written to docs/benchmarks.md (section ``quality``),
the sweep's plot to docs/images/quality-sweep.png (needs matplotlib:
``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import git_commit  # noqa: E402  (after the path above)

METHODS = ("uce", "mace", "esd", "esd-u", "realera-cf", "realera-no-bcr", "realera")
#: Presets whose training settings are policykit's own: the benchmark gives them the demo's noise-alignment
#: budget. The peer presets run at their authors' defaults (nothing set in the policy).
OWN_METHODS = ("realera", "realera-no-bcr", "realera-cf")
#: The audit templates of every task (the demo's): erased prompts are drawn in each.
TEMPLATES = ("a {}", "a picture of a {}", "an image of a {}")
#: Neighbour settings of every task (the demo's); the sweep varies radius and beyond radius.
RADIUS, SAMPLES, MIN_COSINE, SPACE = 0.3, 16, 0.7, "text"
#: Noise-alignment settings of policykit's own presets (the demo's).
LORA = {"steps": 100, "batch_size": 8}
SWEEP_RADII = (0.15, 0.3, 0.6)
SWEEP_BEYOND = (1.5, 2.0, 3.0)  # beyond radius as a multiple of the radius
#: A larger noise-alignment budget for the methods that train (the demo's 100 steps at 1e-4 leave ESD
#: untrained), on a single-concept, a shape-wide and a multi-concept task.
BUDGET = {"steps": 400, "learning_rate": 1e-3}
BUDGET_TASKS = ("pair", "shape", "set-5")
BUDGET_METHODS = ("esd", "mace", "realera-no-bcr", "realera")
BUILD_VERSION = 2  # bump when the way a result is measured changes (part of every result key)
#: Stored results live in the repository, so a later run (another machine, another session) resumes
#: them; the base images under ``base-images/`` are drawn again from their seeds and not committed.
RESULTS = ROOT / "benchmarks" / "results" / "quality"
#: The builtin:emblems suite (``--suite emblems``, benchmarks/emblem_tasks.py): its results, its methods.
EMBLEM_RESULTS = ROOT / "benchmarks" / "results" / "emblems"
#: The weights every result was measured on before results named their world's bytes: the shipped
#: builtin:shapes, and revision 1 of builtin:emblems. Their keys omit the sha, so those results still resolve;
#: a result on any other weights has the sha in its key and in its record (``world_sha256``), so a table can
#: never take a result of one revision of a world for another.
KEYLESS_WORLD_SHA256 = {
    "builtin:shapes": "e1b95eb157498afe91a0ea7feedf35a0b4fb926c4e5ec3ac2c6d0fef2b0d1451",
    "builtin:emblems": "124c20b425de5122073b57d393afae0eac54c8c7d88e5ae2646af68a663b6df3",
}
#: ``--world-sha256``: report the results of other weights of a task's world than those shipped (an earlier
#: revision: its tables stay reproducible from the stored results). Measuring always uses the shipped weights.
WORLD_SHA256_OVERRIDE: dict[str, str] = {}
EMBLEM_METHODS = ("uce", "mace", "esd", "realera-no-bcr", "realera")


@dataclass(frozen=True)
class Erase:
    concept: str
    anchor: str
    synonyms: tuple[str, ...] = ()
    associated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """One erasure task: what the policy lists, and what the benchmark holds out of it."""

    name: str
    kind: str
    erase: tuple[Erase, ...]
    preserve: tuple[str, ...]
    #: (phrase, concept it means): other ways to reach an erased concept, not in the policy.
    held_out_erased: tuple[tuple[str, str], ...] = ()
    #: Other concepts of the world, not in the policy: they must still be drawn.
    held_out_preserved: tuple[str, ...] = ()
    #: The built-in world the task runs on; its policy's templates (empty: :data:`TEMPLATES`); the template
    #: held-out prompts are drawn in; ``dev`` or ``test`` (benchmarks/emblem_tasks.py), empty for the
    #: builtin:shapes suite, which is not split (docs/benchmarks.md says so).
    world: str = "builtin:shapes"
    templates: tuple[str, ...] = ()
    probe_template: str = "a {}"
    split: str = ""
    #: Extra audit probes ``(prompt, judged concept, "erased" | "preserved")``, for what a held-out phrase
    #: judged by its own meaning cannot say (the style and object tasks, benchmarks/emblem_tasks.py).
    probes: tuple[tuple[str, str, str], ...] = ()

    def definition(self) -> dict:
        """What the task is, for result keys: the fields added for other worlds only where they are set,
        so the keys of the builtin:shapes results stored before them stay as they were."""
        added = {"world": "builtin:shapes", "templates": (), "probe_template": "a {}", "split": "", "probes": ()}
        return {k: v for k, v in asdict(self).items() if not (k in added and v == added[k])}


def _set(names: list[str], preserve: list[str], held_out_preserved: list[str], name: str) -> Task:
    """A multi-concept task: each ``<colour> <shape>`` to ``gray <shape>``, one listed synonym and its
    associated words, one held-out synonym each."""
    from policykit.shapes.world import load_world

    world = load_world()
    erase, held = [], []
    for concept in names:
        colour, shape = concept.split()
        cs, ss = world.colour_synonyms[colour], world.shape_synonyms[shape]
        associated = tuple(w for w, c in world.associated.items() if c.name == concept)
        erase.append(Erase(concept, f"gray {shape}", (f"{cs[0]} {shape}",), associated))
        held.append((f"{cs[-1]} {ss[0]}", concept))
    return Task(name, f"{len(names)} concepts at once", tuple(erase), tuple(preserve), tuple(held),
                tuple(held_out_preserved))


#: Ten colour-and-shape pairs spread over colours and shapes; set-k erases the first k.
SET_ORDER = ["red circle", "blue square", "green triangle", "yellow cross", "purple circle", "red square",
             "blue triangle", "green cross", "yellow circle", "purple square"]
#: Pairs no set erases: the sets' preserves and held-out preserves come from these.
SET_REST = ["red triangle", "red cross", "blue circle", "blue cross", "green circle", "green square",
            "yellow square", "yellow triangle", "purple triangle", "purple cross"]


def tasks() -> list[Task]:
    """The fixed suite, in the order the tables show it."""
    return [
        Task("pair", "a colour-and-shape pair",
             (Erase("red circle", "gray circle", ("crimson circle", "scarlet disc", "red disc"), ("apple", "cherry")),),
             ("red square", "blue circle", "yellow circle", "green triangle"),
             (("red dot", "red circle"), ("scarlet circle", "red circle"), ("crimson dot", "red circle")),
             ("red triangle", "purple circle", "blue square", "green circle")),
        Task("colour", "a colour across all shapes",
             (Erase("red circle", "gray circle", ("crimson circle",), ("apple",)),
              Erase("red square", "gray square", ("scarlet square",), ("brick",)),
              Erase("red triangle", "gray triangle", ("crimson triangle",)),
              Erase("red cross", "gray cross", ("scarlet cross",), ("medic",))),
             ("blue circle", "green square", "yellow triangle", "purple cross"),
             (("scarlet dot", "red circle"), ("crimson box", "red square"), ("scarlet wedge", "red triangle"),
              ("crimson plus", "red cross"), ("cherry", "red circle")),
             ("purple circle", "yellow square", "green triangle", "blue cross")),
        Task("shape", "a shape across all colours",
             (Erase("red circle", "red square", ("red disc",), ("apple",)),
              Erase("green circle", "green square", ("green disc",), ("pea",)),
              Erase("blue circle", "blue square", ("blue disc",), ("blueberry",)),
              Erase("yellow circle", "yellow square", ("yellow disc",), ("sun",)),
              Erase("purple circle", "purple square", ("purple disc",), ("grape",)),
              Erase("gray circle", "gray square", ("gray disc",))),
             ("red triangle", "green cross", "blue triangle", "yellow cross"),
             (("crimson dot", "red circle"), ("jade dot", "green circle"), ("cobalt dot", "blue circle"),
              ("canary dot", "yellow circle"), ("plum", "purple circle"), ("silver dot", "gray circle")),
             ("purple triangle", "green triangle", "red cross", "gray triangle")),
        Task("associated", "a concept reached through an associated word",
             (Erase("purple circle", "gray circle", ("violet circle", "mauve disc")),),
             ("purple square", "blue circle", "red circle", "green triangle"),
             (("grape", "purple circle"), ("plum", "purple circle"), ("violet dot", "purple circle")),
             ("purple triangle", "yellow circle", "blue square", "gray square")),
        _set(SET_ORDER[:2], ["red square", "blue circle", "green triangle"], ["yellow cross", "purple circle"],
             "set-2"),
        _set(SET_ORDER[:5], SET_REST[:4], SET_REST[4:7], "set-5"),
        _set(SET_ORDER[:10], SET_REST[:5], SET_REST[5:], "set-10"),
    ]


def policy_dict(task: Task, method: str, *, radius: float = RADIUS, beyond: float | None = None,
                space: str = SPACE, samples_per_prompt: int = 8, steps: int | None = None,
                learning_rate: float | None = None, overrides: tuple = (), catalog: bool = False,
                catalog_mass: float | None = None) -> dict:
    """The policy a task compiles to for ``method`` (``beyond``: beyond radius, relative; None: 2 x radius;
    ``steps``/``learning_rate``: noise alignment's, None: the demo's; ``overrides``: ``(dotted policy path,
    value)`` pairs written over the rest, e.g. ``("training.closed_form.lambda", 5.0)``; ``catalog``: also
    preserve every entity of the world the task never judges, :func:`emblem_tasks.catalog_names`, each at
    weight 1, or, with ``catalog_mass``, all together weighing that many times the erased names, the rule the
    engine's vocabulary rows follow)."""
    neighbors = {"radius": radius, "samples": SAMPLES, "min_cosine": MIN_COSINE, "space": space}
    if beyond is not None:
        neighbors["beyond_radius"] = beyond
    probes = ([{"prompt": task.probe_template.format(phrase), "concept": concept, "expect": "erased"}
               for phrase, concept in task.held_out_erased]
              + [{"prompt": task.probe_template.format(concept), "concept": concept, "expect": "preserved"}
                 for concept in task.held_out_preserved]
              + [{"prompt": prompt, "concept": concept, "expect": expect} for prompt, concept, expect in task.probes])
    policy = {
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
        "metadata": {"name": f"bench-{task.name}", "version": "1.0.0"},
        "base_model": {"id": task.world},
        "defaults": {"neighbors": neighbors, "templates": list(task.templates or TEMPLATES)},
        "erase": [{"concept": e.concept, "anchor": e.anchor, "synonyms": list(e.synonyms),
                   "associated": list(e.associated)} for e in task.erase],
        "preserve": [{"concept": p} for p in task.preserve],
        **_catalog(task, catalog, catalog_mass),
        "training": {"method": method, "seed": 0, **_training(method, steps, learning_rate)},
        "audit": {"samples_per_prompt": samples_per_prompt, "probes": probes},
    }
    for path, value in overrides:
        *parents, last = path.split(".")
        node = policy
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return policy


def _catalog(task: Task, catalog: bool, mass: float | None) -> dict:
    """The policy's ``catalog`` (docs/policy-reference.md, "Catalogs"): every entity of builtin:emblems, of
    which the compiler keeps those the task does not place (:func:`emblem_tasks.catalog_names`), each at
    preserve weight ``mass x erased / names``; ``mass`` None: weight 1 each (a peer scales them by its own
    rule, e.g. UCE's ``max(0.1, 1 / (1 + preserves))``). The benchmark judges its own prompts, so none of the
    catalog is audited by the policy."""
    if not catalog:
        return {}
    if task.world != "builtin:emblems":
        raise SystemExit(f"task {task.name}: a retain catalog exists on builtin:emblems only")
    from emblem_tasks import catalog_names

    if mass is None:
        mass = len(catalog_names(task)) / len(task.erase)
    return {"catalog": {"builtin": "builtin:emblems", "mass": mass, "audited": 0}}


def _training(method: str, steps: int | None, learning_rate: float | None) -> dict:
    """Training settings a task writes: the demo's LoRA budget for policykit's presets, nothing for a peer
    (its authors' defaults) unless a budget is asked for (ESD's iterations, the LoRA's steps otherwise)."""
    budget = {**({} if steps is None else {"steps": steps}),
              **({} if learning_rate is None else {"learning_rate": learning_rate})}
    if method in OWN_METHODS:
        return {"lora": {**LORA, **budget}}
    if method.startswith("esd") and budget:
        return {"esd": {("iterations" if k == "steps" else k): v for k, v in budget.items()}}
    return {"lora": budget} if budget else {}


def _engine_code_note(commits: list[str]) -> str:
    """For several commits: whether their ``policykit/`` trees are identical (``git diff``), so a table that
    lists them still shows one version of the code that edits and audits."""
    import subprocess

    if len(commits) < 2:
        return ""
    if any(c.endswith("+dirty") or c == "unknown" for c in commits):
        return " (some measured with uncommitted changes under policykit/)"
    differ = sorted({name for c in commits[1:] for name in subprocess.run(
        ["git", "diff", "--name-only", commits[0], c, "--", "policykit"], cwd=ROOT, capture_output=True,
        text=True).stdout.split()})
    return (", whose policykit/ trees are identical (they differ in benchmark scripts, tests and docs only)"
            if not differ else f", WHOSE policykit/ TREES DIFFER, in {', '.join(differ)}")


@functools.lru_cache(maxsize=None)
def shipped_world_sha256(world: str) -> str:
    """The sha256 of the weights of ``world`` that this checkout ships."""
    from policykit.models import resolve_model

    return resolve_model(world).sha256()


def world_sha256(world: str) -> str:
    """The sha256 of the weights a task's world is measured on (``--world-sha256``, else those shipped)."""
    return WORLD_SHA256_OVERRIDE.get(world) or shipped_world_sha256(world)


def _world_note(task_list) -> str:
    """Names the weights of each world in a table (every result in it was measured on them)."""
    worlds = sorted({t.world for t in task_list})
    return "; ".join(f"{w} weights sha256 {world_sha256(w)[:16]}" + (
        "" if world_sha256(w) == shipped_world_sha256(w) else " (an earlier revision, not the one shipped)")
        for w in worlds)


def _world_args() -> str:
    """The ``--world-sha256`` arguments a report was given (to print with the command that writes it)."""
    return "".join(f" --report-only --world-sha256 {w}={sha}" for w, sha in sorted(WORLD_SHA256_OVERRIDE.items()))


def engine_version() -> int:
    from policykit.realera.engine import ENGINE_VERSION

    return ENGINE_VERSION


def compile_task(task: Task, method: str, **settings):
    """The compiled plan of a task for ``method``."""
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy

    return compile_plan(Policy.model_validate(policy_dict(task, method, **settings)))


# ---------------------------------------------------------------- one measurement


@dataclass(frozen=True)
class Unit:
    """One measurement: a task edited by a method with some settings (``method`` "base": no edit)."""

    task: str
    method: str
    radius: float = RADIUS
    beyond: float | None = None
    space: str = SPACE
    samples_per_prompt: int = 8
    #: Noise-alignment budget (None: the demo's, :data:`LORA`).
    steps: int | None = None
    learning_rate: float | None = None
    #: ``EngineOptions.shell_mass`` (None: the engine's default); only ``realera`` has a shell.
    shell_mass: float | None = None
    #: Policy settings written over the task's (:func:`policy_dict`'s ``overrides``): a method's other settings.
    overrides: tuple = ()
    #: Preserve a retain catalog beside the task's own preserves (:func:`emblem_tasks.catalog_names`).
    catalog: bool = False
    #: The catalog's total weight relative to the erased names (None: weight 1 per name).
    catalog_mass: float | None = None

    def key(self) -> str:
        """Names the stored result: the unit's settings and its task's definition.

        For ``realera`` the shell weight it ran with is part of the key, default or not, so a
        change of the engine's default measures anew instead of reusing old results.
        """
        fields = {k: v for k, v in asdict(self).items()
                  if not (k in ("steps", "learning_rate", "shell_mass", "catalog_mass") and v is None)
                  and not (k == "overrides" and not v) and not (k == "catalog" and not v)}
        if self.method == "realera":
            fields["shell_mass"] = self.effective_shell_mass()
        task = _task(self.task)
        sha = world_sha256(task.world)
        if sha != KEYLESS_WORLD_SHA256.get(task.world):
            fields["world_sha256"] = sha
        body = json.dumps({"v": BUILD_VERSION, "engine": engine_version(), **fields,
                           "task_definition": task.definition()}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def effective_shell_mass(self) -> float:
        from policykit.realera.engine import EngineOptions

        return EngineOptions().shell_mass if self.shell_mass is None else self.shell_mass

    def label(self) -> str:
        extra = []
        if self.radius != RADIUS:
            extra.append(f"r={self.radius:g}")
        if self.beyond is not None:
            extra.append(f"beyond={self.beyond:g}")
        if self.space != SPACE:
            extra.append(f"{self.space} space")
        if self.steps is not None:
            extra.append(f"{self.steps} steps")
        if self.learning_rate is not None:
            extra.append(f"lr {self.learning_rate:g}")
        if self.shell_mass is not None:
            extra.append(f"shell mass {self.shell_mass:g}")
        extra += [f"{path.rsplit('.', 1)[-1]}={value:g}" if isinstance(value, (int, float)) else
                  f"{path.rsplit('.', 1)[-1]}={value}" for path, value in self.overrides]
        if self.catalog:
            extra.append("+ catalog" + ("" if self.catalog_mass is None else f" x{self.catalog_mass:g}"))
        return self.method + (f" ({', '.join(extra)})" if extra else "")


def _n(samples, task: str) -> int:
    """Images per prompt of ``task``: ``samples`` itself, or ``samples(task)`` when it is a function."""
    return samples(task) if callable(samples) else samples


def emblem_samples(task: str) -> int:
    """Images per prompt on an emblems task, by its size (:data:`emblem_tasks.SAMPLES_BY_SIZE`): the prompts
    grow with the entities erased, so large tasks need fewer images per prompt for the same count."""
    from emblem_tasks import SAMPLES_BY_SIZE

    return SAMPLES_BY_SIZE[len(_task(task).erase)]


def method_unit(task: str, spec: str, samples: int) -> Unit:
    """The unit of a method spec: a preset (``uce``), or a preset with policy settings of its own,
    ``preset[dotted.path=value;...]`` (``uce[training.closed_form.lambda=5]``; values read as JSON;
    ``shell_mass=`` sets the engine's shell weight)."""
    method, _, rest = spec.partition("[")
    overrides = []
    if rest:
        if not rest.endswith("]"):
            raise SystemExit(f"method {spec!r}: settings go in one [...] at the end")
        for item in filter(None, rest[:-1].split(";")):
            path, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"method {spec!r}: {item!r} is not path=value")
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
            overrides.append((path.strip(), value))
    # the engine's shell weight is no policy setting: ``realera[shell_mass=0.5]`` sets the unit's
    # ``[catalog=1]`` preserves the task's retain catalog (:func:`emblem_tasks.catalog_names`), no policy path
    shell = dict(overrides).pop("shell_mass", None)
    catalog = bool(dict(overrides).pop("catalog", False))
    mass = dict(overrides).pop("catalog_mass", None)
    if mass is not None and not catalog:
        raise SystemExit(f"method {spec!r}: catalog_mass needs catalog=1")
    overrides = [(k, v) for k, v in overrides if k not in ("shell_mass", "catalog", "catalog_mass")]
    return Unit(task, method, samples_per_prompt=samples, shell_mass=shell, overrides=tuple(overrides),
                catalog=catalog, catalog_mass=None if mass is None else float(mass))


def _task(name: str) -> Task:
    from emblem_tasks import emblem_tasks

    by_name = {t.name: t for t in (*tasks(), *emblem_tasks())}
    if name not in by_name:
        raise SystemExit(f"unknown task {name!r}; tasks: {', '.join(by_name)}")
    return by_name[name]


def _load_base_pipeline(world: str = "builtin:shapes"):
    from policykit.models import load_pipeline, resolve_model

    return load_pipeline(resolve_model(world))


def _evaluation(task: Task, samples_per_prompt: int, results: Path, pipe):
    """The task's audit prompts (at the task's own radius, whatever the unit's settings, so every
    method and sweep point is judged on the same prompts) and the base model's images of them."""
    import numpy as np

    from policykit.audit.run import audit_prompt_set, draw_prompt_set

    plan = compile_task(task, "realera", samples_per_prompt=samples_per_prompt)
    prompt_set = audit_prompt_set(plan, pipe)
    path = (results / "base-images"
            / f"{task.name}-{world_sha256(task.world)[:12]}-{plan.plan_hash[:16]}-{samples_per_prompt}.npy")
    if path.is_file():
        before = np.load(path)
    else:
        before = draw_prompt_set(plan, pipe, prompt_set)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, before)
        os.replace(tmp, path)
    return plan, prompt_set, before


def _shares(outcomes) -> dict:
    """Acc_e, Acc_g, Acc_s, H_o, and the held-out and listed parts of Acc_g and Acc_s (the audit's
    own arithmetic, :func:`~policykit.audit.metrics.compute_metrics`, on each part's prompts)."""
    from policykit.audit.metrics import compute_metrics

    def part(roles):
        return compute_metrics([o for o in outcomes if o.role in roles])

    metrics = compute_metrics(outcomes).to_dict()
    return {**metrics, "h_c": h_c(metrics["acc_e"], metrics["acc_s"]),
            "acc_g_listed": part({"synonym", "associated"}).acc_g, "acc_g_held_out": part({"probe-erased"}).acc_g,
            "acc_g_neighbors": part({"neighbor"}).acc_g,
            "acc_s_listed": part({"preserved"}).acc_s, "acc_s_held_out": part({"probe-preserved"}).acc_s,
            # the style and object tasks: held-out prompts judged on part of what they ask (``attribute=value``:
            # the object kept when its style is erased) and on all of it (the other styles, shapes, entities)
            "acc_s_content": _acc_s([o for o in outcomes if o.role == "probe-preserved" and "=" in o.concept]),
            "acc_s_others": _acc_s([o for o in outcomes if o.role == "probe-preserved" and "=" not in o.concept]),
            "images": sum(o.images for o in outcomes)}


def _acc_s(outcomes) -> float | None:
    from policykit.audit.metrics import compute_metrics

    return compute_metrics(outcomes).acc_s if outcomes else None


def h_c(acc_e: float | None, acc_s: float | None) -> float | None:
    """MACE's H_c: the harmonic mean of efficacy (1 - Acc_e) and specificity (Acc_s)."""
    if acc_e is None or acc_s is None:
        return None
    efficacy = 1.0 - acc_e
    return 0.0 if efficacy <= 0 or acc_s <= 0 else 2 * efficacy * acc_s / (efficacy + acc_s)


def measure(unit: Unit, results: Path, threads: int = 1) -> dict:
    """Run one unit (in this process) and store its result; return it."""
    import torch

    from policykit.audit.sampling import classify_outcomes
    from policykit.realera.edit import apply_edit
    from policykit.realera.engine import run_plan

    torch.set_num_threads(threads)
    task = _task(unit.task)
    if task.world in WORLD_SHA256_OVERRIDE:
        raise SystemExit("--world-sha256 only reports stored results: measuring uses the shipped weights")
    pipe = _load_base_pipeline(task.world)
    eval_plan, prompt_set, before = _evaluation(task, unit.samples_per_prompt, results, pipe)
    classifier = task_classifier(task.world)
    record: dict = {"unit": asdict(unit), "label": unit.label(), "prompts": len(prompt_set.prompts),
                    "engine_version": engine_version(), "commit": git_commit(),
                    "world_sha256": world_sha256(task.world),
                    # the machine's load when the unit started and ended: its timings read beside them
                    "load": [round(x, 2) for x in os.getloadavg()]}
    if unit.method == "base":
        images, seconds, stages = before, 0.0, {}
    else:
        plan = compile_task(task, unit.method, radius=unit.radius,
                            beyond=None if unit.beyond is None else unit.beyond * unit.radius,
                            space=unit.space, samples_per_prompt=unit.samples_per_prompt, steps=unit.steps,
                            learning_rate=unit.learning_rate, overrides=unit.overrides, catalog=unit.catalog,
                            catalog_mass=unit.catalog_mass)
        from policykit.realera.engine import EngineOptions

        options = EngineOptions() if unit.shell_mass is None else EngineOptions(shell_mass=unit.shell_mass)
        record["engine_options"] = asdict(options)
        started = time.perf_counter()
        edit = run_plan(plan, pipe, cache_dir=None, inputs_key=task.world, log=lambda line: None,
                        progress=False, options=options)
        seconds = time.perf_counter() - started
        stages = {r.name: round(r.seconds, 2) for r in edit.records}
        record["stage_info"] = {r.name: {k: v for k, v in r.info.items() if isinstance(v, (int, float, str))}
                                for r in edit.records}
        record["covered"] = sorted({p["phrase"] for c in edit.coverage for p in c.get("phrases", [])
                                    if p.get("inside")})
        apply_edit(pipe, edit)
        from policykit.audit.run import draw_prompt_set

        images = draw_prompt_set(eval_plan, pipe, prompt_set)
    outcomes = [pair.after for pair in classify_outcomes(prompt_set.prompts, before, images, classifier)]
    import resource

    # the unit's process is its own (run_units), so this is the peak of the model, edit and audit together
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record.update({"metrics": _shares(outcomes), "edit_seconds": round(seconds, 2), "stages": stages,
                   "peak_rss_mb": round(peak), "load_at_end": [round(x, 2) for x in os.getloadavg()],
                   "threads": threads,
                   "per_prompt": [{"prompt": o.prompt, "role": o.role, "hits": o.hits, "images": o.images}
                                  for o in outcomes]})
    path = _result_path(unit, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return record


def task_classifier(world: str):
    """The pixel-truth classifier of ``world``; on builtin:emblems it also judges the ``attribute=value``
    concepts of the style and object tasks (``emblem_tasks.judged_meaning``)."""
    from policykit.audit.classifiers import PixelTruthClassifier

    if world != "builtin:emblems":
        return PixelTruthClassifier(world)
    from emblem_tasks import judged_meaning

    class TaskClassifier(PixelTruthClassifier):
        def meaning(self, concept: str):
            return judged_meaning(self.world, concept)

    return TaskClassifier(world)


def _result_path(unit: Unit, results: Path) -> Path:
    return results / unit.task / f"{unit.method}-{unit.key()}.json"


def _worker(args) -> tuple[Unit, dict | None, str | None, float]:
    from policykit.cli import _drop_torchvision_notices

    _drop_torchvision_notices()
    unit, results, threads = args
    started = time.perf_counter()
    try:
        return unit, measure(unit, results, threads), None, time.perf_counter() - started
    except Exception as exc:  # reported and left for a rerun; the other units go on
        import traceback

        return unit, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}", \
            time.perf_counter() - started


def run_units(units: list[Unit], results: Path, *, jobs: int, threads: int, fresh: bool) -> dict[Unit, dict]:
    """Measure the units not already stored (all with ``fresh``), ``jobs`` processes at a time."""
    import multiprocessing

    done: dict[Unit, dict] = {}
    todo = []
    for unit in units:
        path = _result_path(unit, results)
        if path.is_file() and not fresh:
            done[unit] = json.loads(path.read_text(encoding="utf-8"))
        else:
            todo.append(unit)
    if not todo:
        return done
    # Base units first: they draw the base images every other unit of their task reuses.
    bases = [u for u in todo if u.method == "base"]
    rest = [u for u in todo if u.method != "base"]
    print(f"quality: {len(done)} result(s) on disk, measuring {len(todo)} with {jobs} process(es) x "
          f"{threads} thread(s)", file=sys.stderr)
    started = time.perf_counter()
    failures = []
    context = multiprocessing.get_context("spawn")
    count = 0
    for batch in (bases, rest):
        if not batch:
            continue
        with context.Pool(jobs, maxtasksperchild=1) as pool:
            for unit, record, error, seconds in pool.imap_unordered(_worker, [(u, results, threads) for u in batch]):
                count += 1
                elapsed = time.perf_counter() - started
                if error:
                    failures.append((unit, error))
                    print(f"  [{count}/{len(todo)}] {unit.task} / {unit.label()}: FAILED after {seconds:.0f} s: "
                          f"{error.splitlines()[0]}", file=sys.stderr)
                    continue
                done[unit] = record
                m = record["metrics"]
                print(f"  [{count}/{len(todo)}] {unit.task} / {unit.label()}: {_pct(m['acc_e'])} / "
                      f"{_pct(m['acc_g'])} / {_pct(m['acc_s'])}, H_o {_pct(m['h_o'])}, edit "
                      f"{record['edit_seconds']:.0f} s ({seconds:.0f} s in all; {elapsed / 60:.1f} min so far)",
                      file=sys.stderr)
    for unit, error in failures:
        print(f"quality: {unit.task} / {unit.label()} failed:\n{error}", file=sys.stderr)
    return done


# ---------------------------------------------------------------- tables


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


#: Shell weight of the engine before this benchmark chose 0.5; its realera results are shown next to the new.
OLD_SHELL_MASS = 1.0


def main_rows(task_list: list[Task], methods: list[str], done: dict[Unit, dict], samples: int,
              with_h_c: bool = False) -> list[list[str]]:
    rows = []
    for task in task_list:
        units = [(m, method_unit(task.name, m, _n(samples, task.name))) for m in ["base", *methods]]
        for method, unit in units:
            record = done.get(unit)
            if record is None:
                continue
            m = record["metrics"]
            extra = [_pct(h_c(m["acc_e"], m["acc_s"]))] if with_h_c else []
            peak = [str(record.get("peak_rss_mb", "n/a"))] if with_h_c else []
            rows.append([task.name, unit.label(), _pct(m["acc_e"]), _pct(m["acc_g"]), _pct(m["acc_g_held_out"]),
                         _pct(m["acc_g_neighbors"]), _pct(m["acc_s"]), _pct(m["acc_s_held_out"]), _pct(m["h_o"]),
                         *extra, "-" if method == "base" else _seconds(record["edit_seconds"]), *peak])
    return rows


MAIN_HEADERS = ["task", "method", "Acc_e", "Acc_g", "held-out", "neighbours", "Acc_s", "held-out", "H_o", "edit s"]


def style_rows(task_list: list[Task], methods: list[str], done: dict[Unit, dict], samples: int) -> list[list[str]]:
    """The style and object tasks' table: what is erased, said as listed and as held out; what must stay."""
    rows = []
    for task in task_list:
        for method in ["base", *methods]:
            unit = method_unit(task.name, method, _n(samples, task.name))
            record = done.get(unit)
            if record is None:
                continue
            m = record["metrics"]
            rows.append([task.name, unit.label(), _pct(m["acc_e"]), _pct(m["acc_g_listed"]), _pct(m["acc_g_held_out"]),
                         _pct(m["acc_s_listed"]), _pct(m.get("acc_s_others")), _pct(m.get("acc_s_content")),
                         _pct(m["h_o"]), "-" if method == "base" else _seconds(record["edit_seconds"])])
    return rows


STYLE_NOTE = (
    "The style and object tasks (benchmarks/emblem_tasks.py): `*-style-<pattern>` erases a pattern everywhere by "
    "its two adjectives, anchored on the plain style; `*-entity-style` erases one entity's pattern only, anchored on "
    "its emblem in the plain style; `*-object-<shape>` erases a shape in every colour by its name and one synonym. "
    "Columns: Acc_e and `listed phrasings` (the synonym the policy lists) are images still showing what was erased; "
    "`held-out phrasings` the same for phrasings the policy never lists (\"in zebra style\", \"pentagram\", the "
    "entity's associated phrases); `listed preserves` and `held-out others` are images of the other patterns, shapes "
    "and entities drawn correctly; `content kept` is, for the style tasks, the erased style's prompts still drawing "
    "their object (shape and colour; the entity's shape, colour and background), the half of a style erasure that "
    "keeps the subject. Acc_s and H_o count all of them.")
STYLE_HEADERS = ["task", "method", "Acc_e", "listed phrasings", "held-out phrasings", "listed preserves",
                 "held-out others", "content kept", "H_o", "edit s"]


def summary_rows(task_list: list[Task], methods: list[str], done: dict[Unit, dict], samples: int) -> list[list[str]]:
    """Per method: the tasks it was measured on, its mean H_o over them, its mean H_o over the common tasks
    (those every method measured on the most tasks has: the fair comparison), and where it is best."""
    def record(task: str, method: str):
        return done.get(method_unit(task, method, _n(samples, task)))

    # the methods measured on the most tasks define the fair comparison (ESD's 1000 iterations may be run
    # on a few tasks only: their own mean is shown, but they do not shrink everyone's common set)
    counts = {m: sum(1 for t in task_list if record(t.name, m)) for m in methods}
    widest = [m for m in methods if counts[m] == max(counts.values(), default=0)]
    common = [t.name for t in task_list if all(record(t.name, m) for m in ["base", *widest])]
    rows = []
    for method in ["base", *methods]:
        own = [t.name for t in task_list if record(t.name, method)]
        values = [record(t, method)["metrics"]["h_o"] for t in own]
        shared = [record(t, method)["metrics"]["h_o"] for t in common] \
            if all(record(t, method) for t in common) else []
        best = [t for t in own if method != "base" and record(t, method)["metrics"]["h_o"]
                >= max(record(t, m)["metrics"]["h_o"] for m in methods if record(t, m)) - 1e-9]
        seconds = [record(t, method)["edit_seconds"] for t in own]
        rows.append([method_unit("", method, 1).label(), str(len(own)),
                     _pct(sum(values) / len(values)) if values else "n/a",
                     _pct(sum(shared) / len(shared)) if shared else "n/a", ", ".join(best) or "-",
                     "-" if method == "base" else _seconds(sum(seconds) / max(len(seconds), 1))])
    return rows


SUMMARY_HEADERS = ["method", "tasks", "mean H_o", "mean H_o, common tasks", "best H_o on", "mean edit s"]


def sweep_units(task: str, samples: int) -> list[Unit]:
    return [Unit(task, "realera", radius=r, beyond=b, samples_per_prompt=samples)
            for r in SWEEP_RADII for b in SWEEP_BEYOND]


def sweep_rows(units: list[Unit], done: dict[Unit, dict]) -> list[list[str]]:
    rows = []
    for unit in units:
        record = done.get(unit)
        if record is None:
            continue
        m = record["metrics"]
        rows.append([f"{unit.radius:g}", f"{unit.beyond * unit.radius:.3g} ({unit.beyond:g} r)", _pct(m["acc_e"]),
                     _pct(m["acc_g"]), _pct(m["acc_g_held_out"]), _pct(m["acc_s"]), _pct(m["acc_s_held_out"]),
                     _pct(m["h_o"])])
    return rows


SWEEP_HEADERS = ["radius", "beyond radius", "Acc_e", "Acc_g", "held-out", "Acc_s", "held-out", "H_o"]


def plot_sweep(units: list[Unit], done: dict[Unit, dict], references: dict[str, dict], path: Path) -> Path | None:
    """Generality (1 - Acc_g) against specificity (Acc_s), one point per sweep setting; other methods
    as reference marks. None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("quality: matplotlib is not installed (pip install -e '.[bench]'); no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    markers = {1.5: "o", 2.0: "s", 3.0: "^"}
    for beyond in SWEEP_BEYOND:
        points = [(u, done[u]["metrics"]) for u in units if u.beyond == beyond and u in done]
        if not points:
            continue
        xs = [m["acc_s"] for _, m in points]
        ys = [1 - m["acc_g"] for _, m in points]
        ax.plot(xs, ys, marker=markers.get(beyond, "o"), label=f"realera, beyond = {beyond:g} x radius")
        if beyond == 2.0:  # one set of radius labels keeps the plot readable
            for (u, _), x, y in zip(points, xs, ys):
                ax.annotate(f"r={u.radius:g}", (x, y), textcoords="offset points", xytext=(0, -12), fontsize=7,
                            ha="center")
    for name, metrics in references.items():
        ax.scatter([metrics["acc_s"]], [1 - metrics["acc_g"]], marker="x", s=50, label=name)
    ax.set_xlabel("specificity Acc_s (higher is better)")
    ax.set_ylabel("generality 1 - Acc_g (higher is better)")
    ax.set_title(f"RealEra radius sweep on task '{units[0].task}' (builtin:shapes)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("shapes", "emblems"), default="shapes",
                        help="builtin:shapes' seven tasks (default) or builtin:emblems' dev and test tasks "
                             "(benchmarks/emblem_tasks.py; no sweep; results in benchmarks/results/emblems)")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--methods", help=f"comma-separated presets (default: {','.join(METHODS)})")
    parser.add_argument("--sweep-task", default="set-5", help="task the radius sweep runs on (default: set-5)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--space-check", action="store_true",
                        help="also run realera in token space on every task (the default-space question)")
    parser.add_argument("--budget-check", action="store_true",
                        help=f"also train {', '.join(BUDGET_METHODS)} with {BUDGET['steps']} steps at learning rate "
                             f"{BUDGET['learning_rate']:g} on {', '.join(BUDGET_TASKS)}")
    parser.add_argument("--old-shell", action="store_true",
                        help=f"also run realera with the old shell weight ({OLD_SHELL_MASS:g}) on every task")
    parser.add_argument("--skip-main", action="store_true",
                        help="measure only the extra units (space check, budget check, sweep); report all stored")
    parser.add_argument("--samples", type=int,
                        help="images per audit prompt (default: 8; emblems: by task size, 4 at 1 entity, 2 at 10, "
                             "1 at 50 and 100)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    parser.add_argument("--results", type=Path,
                        help="where results are stored (default: benchmarks/results/quality, or .../emblems for "
                             "--suite emblems; committed)")
    parser.add_argument("--fresh", action="store_true", help="measure again even where a result is stored")
    parser.add_argument("--report-only", action="store_true", help="only print and write what is stored")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    parser.add_argument("--world-sha256", metavar="WORLD=SHA256", action="append", default=[],
                        help="with --report-only: report the results measured on other weights of WORLD than "
                             "those shipped (an earlier revision, e.g. builtin:emblems=124c20b4...)")
    parser.add_argument("--section",
                        help="write the tables to this section of docs/benchmarks.md (bench:<name>) instead of the "
                             "suite's own, and leave README alone: a partial table beside the full one")
    args = parser.parse_args(argv)
    for pair in args.world_sha256:
        world, _, sha = pair.partition("=")
        if not args.report_only:
            raise SystemExit("--world-sha256 reports stored results only: give --report-only too")
        if not world or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
            raise SystemExit(f"--world-sha256 takes WORLD=SHA256 (64 hex digits), not {pair!r}")
        WORLD_SHA256_OVERRIDE[world] = sha.lower()

    from report import header, markdown_table, text_table, write_section

    emblems = args.suite == "emblems"
    if emblems:
        from emblem_tasks import emblem_tasks, style_tasks

        args.no_sweep = True
    args.results = args.results or (EMBLEM_RESULTS if emblems else RESULTS)
    if args.samples is None:
        args.samples = emblem_samples if emblems else 8
    styles = {t.name for t in style_tasks()} if emblems else set()
    # the emblems suite's default: its entity tasks; the style and object tasks run when named
    suite = [t for t in emblem_tasks() if t.name not in styles] if emblems else tasks()
    task_list = [_task(n) for n in args.tasks.split(",")] if args.tasks else suite
    kinds = {t.name in styles for t in task_list}
    styles_only = kinds == {True}
    if len(kinds) > 1:
        raise SystemExit("name the style and object tasks in a run of their own: they are a table of their own "
                         f"in docs/benchmarks.md ({', '.join(sorted(styles))})")
    methods = args.methods.split(",") if args.methods else list(EMBLEM_METHODS if emblems else METHODS)
    units = [method_unit(t.name, m, _n(args.samples, t.name)) for t in task_list for m in ["base", *methods]]
    if args.old_shell and "realera" in methods:
        units += [Unit(t.name, "realera", samples_per_prompt=_n(args.samples, t.name), shell_mass=OLD_SHELL_MASS)
                  for t in task_list]
    if args.space_check:
        units += [Unit(t.name, "realera", space="token", samples_per_prompt=_n(args.samples, t.name))
                  for t in task_list]
    main_units = list(units)
    budget = []
    if args.budget_check:
        budget = [Unit(t, m, samples_per_prompt=_n(args.samples, t), **BUDGET) for t in BUDGET_TASKS for m in BUDGET_METHODS
                  if t in {task.name for task in task_list}]
        units += budget
    sweep = [] if args.no_sweep else sweep_units(args.sweep_task, _n(args.samples, args.sweep_task))
    units += [u for u in sweep if u not in units]
    started = time.perf_counter()

    def stored(chosen):
        return {u: json.loads(_result_path(u, args.results).read_text()) for u in chosen
                if _result_path(u, args.results).is_file()}

    if args.report_only:
        done = stored(units)
    elif args.skip_main:
        extra = [u for u in units if u not in main_units or u.space != SPACE]
        done = {**stored(units), **run_units(extra, args.results, jobs=args.jobs, threads=args.threads,
                                             fresh=args.fresh)}
    else:
        done = run_units(units, args.results, jobs=args.jobs, threads=args.threads, fresh=args.fresh)
    minutes = (time.perf_counter() - started) / 60

    rows = main_rows(task_list, methods, done, args.samples, with_h_c=emblems)
    headers = MAIN_HEADERS[:-1] + ["H_c", MAIN_HEADERS[-1], "peak MB"] if emblems else MAIN_HEADERS
    if styles_only:
        rows, headers = style_rows(task_list, methods, done, args.samples), STYLE_HEADERS
    summary = summary_rows(task_list, methods, done, args.samples)
    print(text_table(headers, rows))
    print()
    print(text_table(SUMMARY_HEADERS, summary))
    space_rows = []
    if args.space_check:
        for t in task_list:
            text = done.get(Unit(t.name, "realera", samples_per_prompt=_n(args.samples, t.name)))
            token = done.get(Unit(t.name, "realera", space="token", samples_per_prompt=_n(args.samples, t.name)))
            if text and token:
                space_rows.append([t.name] + [f"{_pct(r['metrics']['acc_e'])} / {_pct(r['metrics']['acc_g'])} / "
                                              f"{_pct(r['metrics']['acc_s'])} / {_pct(r['metrics']['h_o'])}"
                                              for r in (token, text)])
        print()
        print(text_table(["task", "token space: Acc_e / Acc_g / Acc_s / H_o", "text space"], space_rows))
    budget_rows = []
    for unit in budget:
        small = done.get(Unit(unit.task, unit.method, samples_per_prompt=_n(args.samples, unit.task)))
        large = done.get(unit)
        if small and large:
            budget_rows.append([unit.task, unit.method] + [
                f"{_pct(r['metrics']['acc_e'])} / {_pct(r['metrics']['acc_g'])} / {_pct(r['metrics']['acc_s'])} / "
                f"{_pct(r['metrics']['h_o'])}, {r['edit_seconds']:.0f} s" for r in (small, large)])
    budget_headers = ["task", "method", f"{LORA['steps']} steps, lr 1e-4 (the demo's)",
                      f"{BUDGET['steps']} steps, lr {BUDGET['learning_rate']:g}"]
    if budget_rows:
        print()
        print(text_table(budget_headers, budget_rows))
    plot = None
    if sweep:
        print()
        print(text_table(SWEEP_HEADERS, sweep_rows(sweep, done)))
        candidates = [Unit(args.sweep_task, m, samples_per_prompt=_n(args.samples, args.sweep_task)) for m in ["base", *methods]
                      if m != "realera"]
        candidates += [u for u in budget if u.task == args.sweep_task and u.method == "esd"]
        references = {u.label(): done[u]["metrics"] for u in candidates if u in done}
        if not args.no_write:
            plot = plot_sweep(sweep, done, references, ROOT / "docs" / "images" / "quality-sweep.png")
    print(f"\nquality: {len(done)} result(s), {minutes:.1f} min this run", file=sys.stderr)
    if args.no_write:
        return 0
    threads = sorted({r.get("threads", 1) for r in done.values()})
    commits = sorted({r.get("commit", "unknown") for r in done.values() if r["unit"]["method"] != "base"})
    # the command as it would measure the table (a report of an earlier world revision can only be a report)
    hidden = ("--no-write",) if args.world_sha256 else ("--report-only", "--no-write")
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a not in hidden]
    times = sorted(_result_path(u, args.results).stat().st_mtime for u in done if _result_path(u, args.results).is_file())
    window = ""
    if times:
        import datetime as dt

        fmt = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")  # noqa: E731
        window = f" Results measured between {fmt(times[0])} and {fmt(times[-1])} UTC."
    parts = [
        header(shown) + window + f" Engine version {engine_version()}, code at commit(s) {', '.join(commits)}"
        + _engine_code_note(commits) + ". Measured on " + _world_note(task_list) + ".",
        f"{len(task_list)} tasks x {len(methods) + 1} models, "
        f"{'4, 2 and 1 images per prompt at 1, 10 and 50-100 entities' if callable(args.samples) else args.samples}"
        f"{'' if callable(args.samples) else ' images per prompt'}, the pixel-truth "
        f"classifier; each result measured in a process of its own with "
        f"{', '.join(str(t) for t in threads)} torch thread(s); `edit s` is the wall time of the edit alone "
        "(no stage cache), the audit images excluded. Shares of images: Acc_e erased prompts still showing the "
        "concept, Acc_g synonyms, associated words, held-out phrases and held-out mined neighbours still "
        "showing it (the `held-out` column: phrases of the concept the policy does not list; `neighbours`: "
        "mined neighbours drawn from a stream the edit never sees), Acc_s preserved concepts drawn correctly "
        "(`held-out`: concepts the policy does not name).",
        *([STYLE_NOTE] if styles_only else []),
        markdown_table(headers, rows, align="ll" + "r" * (len(headers) - 2)),
        "Per method: mean H_o over the tasks it was measured on, and over the common tasks (those measured for "
        "every method that ran on the most tasks; `best H_o on`: tasks where it ties or beats every method "
        "measured there):",
        markdown_table(SUMMARY_HEADERS, summary, align="lrrrlr"),
    ]
    if space_rows:
        parts += ["Mining space, realera (Acc_e / Acc_g / Acc_s / H_o):",
                  markdown_table(["task", "token space", "text space"], space_rows, align="lrr")]
    if budget_rows:
        parts += ["Noise-alignment budget (Acc_e / Acc_g / Acc_s / H_o, edit time):",
                  markdown_table(budget_headers, budget_rows, align="llll")]
    if sweep:
        parts += [f"Sweep of the neighbour radius and the beyond radius, realera on task `{args.sweep_task}` "
                  "(the audit prompts and held-out neighbours are those of the task at radius "
                  f"{RADIUS:g}, the same for every point):", markdown_table(SWEEP_HEADERS, sweep_rows(sweep, done))]
        if plot is not None:
            parts.append(f"![generality against specificity](images/{plot.name})")
    splits = {t.split for t in task_list}
    # the emblems dev and test tables are sections of their own, each written by its own run
    name = ("emblems-" + splits.pop() if len(splits) == 1 else "emblems") if emblems else "quality"
    if styles_only:  # the style and object tasks are a table of their own (their columns judge other things)
        name += "-styles"
    path = write_section(args.section or name, "\n\n".join(parts))
    hundred = [r for r in rows if r[0] == "test-e100"]
    if emblems and hundred and not args.section:  # README's "How well it works" quotes the 100-entity row of every method
        write_section("emblems-e100", "\n\n".join([
            f"100 entities of builtin:emblems erased by name at once (test task `test-e100`; engine version "
            f"{engine_version()}, code at {', '.join(commits)}{_engine_code_note(commits)}; measured on {_world_note(task_list)}; "
            f"written by `python benchmarks/quality.py --suite emblems{_world_args()}`; [docs/benchmarks.md](docs/benchmarks.md#erasing-many-concepts-builtinemblems) has "
            "every task):",
            markdown_table(headers, hundred, align="ll" + "r" * (len(headers) - 2))]), doc=ROOT / "README.md")
    print(f"quality: wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
