"""A dev probe, not a benchmark: closed-form what-if variants on one builtin:emblems dev task.

Used to decide what *not* to build (docs/benchmarks.md quotes its numbers in
words; no doc table does). Each variant's shares are appended to
``benchmarks/results/probe-runs.jsonl`` with the engine version, commit and the world's weights.

It runs ``realera-cf`` (or another preset) on a dev task, draws a few images
per prompt with the same seeds before and after, and prints four shares, each among the images the base model got right:
erased names still shown, held-out associated phrases still shown (residue),
unnamed held-out entities kept, listed preserves kept.

Variants are JSON objects; besides policy ``settings`` (``overrides``: dotted
policy paths) and ``options`` (:class:`EngineOptions`), some of them patch
the engine's internals for the run, which is why this is a probe:
``span``: ``"last"`` erases only the last token of a multi-token phrase (not
its prefix, which a causal encoder shares with every phrase that starts the
same way), ``"eos"`` erases only the EOS leak position, ``"last_eos"`` both;
``recomb``: N phrases recombined from the erased phrases' token pieces
(a prefix of one, a suffix of another) are preserved beside the vocabulary;
``na_teacher: "base"``: noise alignment's teacher is the U-Net before the
closed form (its delta taken off), not the refined one, so its preserve terms
would repair what the closed form moved; ``patch`` changes a compiled stage's
settings (``{"noise_alignment": {"steps": 600}}``);
``oracle``: every entity the task keeps is listed as a preserve (a capacity
check); ``catalog``: N entities the task never judges are listed as preserves
beside its own (does a list of *other* names keep the unnamed ones?);
``method: "none"`` with ``text_encoder`` (``text_encoder_edit.py``) erases in
the text encoder instead. Task ``adhoc-e60`` is 60 entities of the dev pool
(5 listed, 15 held out); ``adhoc-all-e100`` is 100 of all 160 in a draw no
test task uses, for capacity checks only (it chooses no setting: its
held-out entities may be test-pool entities).

    python benchmarks/probes/closed_form_variants.py --task adhoc-e60 --k 1 --kk 3 \
        --variants '[{"method": "realera-cf"}, {"span": "last"}, {"oracle": true}]'
"""
import sys, json, time, argparse, os
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "probes"), str(ROOT)]
import numpy as np, torch
from quality import compile_task, _task, world_sha256
from policykit.emblems.sampling import load_pipeline, sample_images
from policykit.audit.classifiers import PixelTruthClassifier
from policykit.realera.engine import run_plan, EngineOptions
from policykit.realera.edit import temporary_edit
from policykit.emblems.world import load_world

ap = argparse.ArgumentParser()
ap.add_argument("--task"); ap.add_argument("--k", type=int, default=3); ap.add_argument("--kk", type=int, default=3)
ap.add_argument("--variants", help="json list of dicts: method, options, settings")
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
import emblem_tasks as ET
if a.task.startswith("adhoc-all-"):  # a capacity check beyond the dev pool's 80 (a draw no test task uses)
    size = int(a.task.split("-e")[1]); task = ET._task("dev", size, 9, ET.pools()["dev"] + ET.pools()["test"])
elif a.task.startswith("adhoc-"):
    size = int(a.task.split("-e")[1]); task = ET._task("dev", size, 0, ET.pools()["dev"])
else:
    task = _task(a.task)
world = load_world()
pipe = load_pipeline(); clf = PixelTruthClassifier("builtin:emblems")
T = task.templates; P = task.probe_template
groups = {"name": [(T[i % len(T)].format(e.concept), e.concept) for e in task.erase for i in range(a.k)],
          "residue": [(P.format(p), c) for p, c in task.held_out_erased for _ in range(a.k)],
          "unnamed": [(P.format(c), c) for c in task.held_out_preserved for _ in range(a.kk)],
          "listed": [(T[0].format(c), c) for c in task.preserve for _ in range(a.kk)]}
prompts = [p for g in groups.values() for p, _ in g]
concepts = [c for g in groups.values() for _, c in g]
def shows(images):
    out = []
    for img, c in zip(images, concepts):
        out.append(clf.shows(img[None], c)[0])
    return np.array(out)
WORLD = world_sha256("builtin:emblems")  # the base images are of the shipped weights: cached under their sha
base_path = ROOT / "benchmarks" / "results" / "probes" / f"base-{a.task}-{a.k}-{a.kk}-{WORLD[:12]}.npy"
base_path.parent.mkdir(parents=True, exist_ok=True)
if os.path.exists(base_path): before = np.load(base_path)
else:
    before = sample_images(pipe, prompts, seed=0); np.save(base_path, before)
b = shows(before)
def summary(s):
    out, i = {}, 0
    for g, items in groups.items():
        n = len(items); bs, ss = b[i:i+n], s[i:i+n]; i += n
        if g in ("name", "residue"):
            out[g] = f"{ss[bs].mean()*100:.0f}% of {bs.sum()}"   # still showing, among base showing
        else:
            out[g] = f"{ss[bs].mean()*100:.0f}% of {bs.sum()}"   # kept, among base right
    return out
LOG = ROOT / "benchmarks" / "results" / "probe-runs.jsonl"
def record(variant, result, seconds):
    """Append one variant's shares to probe-runs.jsonl, with the engine version and commit (what docs quote)."""
    from quality import engine_version, git_commit
    with open(LOG, "a") as f:
        f.write(json.dumps({"task": a.task, "k": a.k, "kk": a.kk, "variant": variant, "shares": result,
                            "seconds": round(seconds), "engine_version": engine_version(), "commit": git_commit(),
                            "world_sha256": WORLD, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}) + "\n")
print("base", summary(b), flush=True)
for v in json.loads(a.variants):
    t0 = time.time()
    opts = EngineOptions(**v.get("options", {}))
    import policykit.realera.prompts as PR
    if not hasattr(PR, "_orig_align"):
        PR._orig_align = PR.align_with_anchor
    def _align(tokenizer, template, concept, anchor, leak_padding=PR.DEFAULT_LEAK_PADDING, _mode=v.get("span")):
        out = PR._orig_align(tokenizer, template, concept, anchor, leak_padding)
        if _mode is None or concept == anchor:
            return out
        c, a = out.concept, out.anchor
        span = c.span[-1:] if "last" in _mode else c.span
        leak_c = c.leak[:1] if "eos" in _mode else c.leak
        n_leak = min(len(leak_c), len(a.leak))
        cp = list(span) + list(leak_c[:n_leak]); ap = list(a.span) + list(a.leak[:n_leak])
        extra = len(cp) - len(ap)
        partners = [ap[0]] * extra + ap if extra >= 0 else ap[-extra:]
        return PR.AlignedPrompt(template=template, concept=c, anchor=a, concept_positions=tuple(cp), anchor_positions=tuple(partners))
    PR.align_with_anchor = _align
    import policykit.realera.encoding as EN
    EN.align_with_anchor = _align
    import policykit.realera.mining as MI
    MI.align_with_anchor = _align
    st = dict(v.get("settings", {}))
    if v.get("oracle"):  # every entity the task keeps, listed as a preserve (a capacity check, not a method)
        keep = list(task.preserve) + [c for c in task.held_out_preserved if " " not in c]
        st["overrides"] = list(st.get("overrides", [])) + [["preserve", [{"concept": c} for c in keep]]]
    if v.get("catalog"):  # entities the task never judges (not erased, listed or held out), listed as preserves
        cat = list(ET.catalog_names(task))[: int(v["catalog"])]
        st["overrides"] = list(st.get("overrides", [])) + [
            ["preserve", [{"concept": c} for c in list(task.preserve) + cat]]]
    import policykit.realera.encoding as EN2
    if not hasattr(EN2, "_orig_vocab"):
        EN2._orig_vocab = EN2.vocabulary_phrases
    def _vocab(tokenizer, count, seed, exclude=(), max_tokens=3, _n=v.get("recomb", 0), _only=v.get("recomb_only", False)):
        out = [] if _only else EN2._orig_vocab(tokenizer, count, seed, exclude, max_tokens)
        if not _n:
            return out
        import numpy as np
        rng = np.random.default_rng([seed, 77])
        pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in exclude]
        pieces = [p for p in pieces if len(p) >= 2]
        skip = {" ".join(p.lower().split()) for p in exclude} | {o.lower() for o in out}
        rec = []
        for _ in range(_n * 20):
            if len(rec) == _n or not pieces: break
            a, b = pieces[rng.integers(len(pieces))], pieces[rng.integers(len(pieces))]
            i, j = int(rng.integers(1, len(a))), int(rng.integers(1, len(b)))
            phrase = " ".join(tokenizer.decode(a[:i] + b[j:]).split())
            if not phrase or phrase.lower() in skip: continue
            skip.add(phrase.lower()); rec.append(phrase)
        return out + rec
    EN2.vocabulary_phrases = _vocab
    if v.get("method") == "none":  # the text-encoder edit alone (below)
        from text_encoder_edit import text_encoder_edit
        with text_encoder_edit(pipe, task, **v.get("text_encoder", {})):
            after = sample_images(pipe, prompts, seed=0)
        result = summary(shows(after)); record(v, result, time.time() - t0)
        print(json.dumps(v), result, f"total {time.time()-t0:.0f}s", flush=True)
        continue
    import policykit.realera.edit as ED
    import policykit.realera.noise_alignment as NA
    if not hasattr(NA, "_orig_teacher"):
        NA._orig_teacher, ED._orig_temporary_edit = NA.NoiseAlignmentTrainer.teacher, ED.temporary_edit
    NA.NoiseAlignmentTrainer.teacher, ED.temporary_edit = NA._orig_teacher, ED._orig_temporary_edit
    if v.get("na_teacher") == "base":  # noise alignment learns the U-Net before the closed form (see the docstring)
        from contextlib import contextmanager
        seen = {}
        @contextmanager
        def _recording_edit(unet, delta):
            seen["delta"] = delta
            with ED._orig_temporary_edit(unet, delta):
                yield
        @contextmanager
        def _base_teacher(self):
            with NA._orig_teacher(self), ED._orig_temporary_edit(self.unet, {k: -d for k, d in seen["delta"].items()}):
                yield
        ED.temporary_edit, NA.NoiseAlignmentTrainer.teacher = _recording_edit, _base_teacher
    plan = compile_task(task, v.get("method", "realera-cf"), **st)
    if v.get("patch"):
        import policykit.realera.settings as S
        stages = []
        for st in plan.stages:
            if st.name in v["patch"]:
                st = st.model_copy(update={"settings": st.settings.model_copy(update=v["patch"][st.name])})
            stages.append(st)
        plan = plan.model_copy(update={"stages": stages})
    edit = run_plan(plan, pipe, cache_dir=None, inputs_key="x", log=lambda l: None, progress=False, options=opts)
    te = time.time() - t0
    info = {r.name: {k: r.info[k] for k in ("erase_residual", "preserve_drift") if k in r.info} for r in edit.records}
    if edit.lora is not None:
        from policykit.realera.edit import apply_edit
        import copy
        p2 = pipe; apply_edit(p2, edit); after = sample_images(p2, prompts, seed=0)
        pipe = load_pipeline()
    else:
        from contextlib import nullcontext
        from text_encoder_edit import text_encoder_edit
        te = text_encoder_edit(pipe, task, **v["text_encoder"]) if "text_encoder" in v else nullcontext()
        with te, torch.no_grad(), temporary_edit(pipe.unet, edit.weights):
            after = sample_images(pipe, prompts, seed=0)
    result = summary(shows(after)); record(v, result, time.time() - t0)
    print(json.dumps(v), result, f"edit {te:.0f}s total {time.time()-t0:.0f}s", info, flush=True)
