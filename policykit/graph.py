"""The concept graph: what a policy erases, keeps, maps to and probes.

A policy is a list of entries; the graph is what those entries mean together.
Its nodes are phrases (node id = :func:`normalize_concept` of the text, so
"Red  Circle" and "red circle" are one node) carrying every role the policy
gives them (``kinds``): ``erase``, ``synonym``, ``associated``, ``anchor``,
``preserve``, ``probe-target``; audit probes are nodes of their own
(``probe:<prompt>``) and the policy itself is a root node (``policy:<name>``).
Edges carry a ``relation``: ``erases`` and ``preserves`` (from the root),
``synonym-of`` and ``associated-with`` (word -> erased concept), ``maps-to``
(erased concept -> anchor), ``probes`` (probe -> concept) and
``conflicts-with`` (added by checks).

Contradictions only visible across entries - a phrase both erased and
preserved, an anchor that is itself erased, anchors mapping in a circle, a
probe expecting the opposite of what the policy does to what its prompt
shows, two phrases that look alike (UTS #39 skeletons) with one erased and
the other kept - are :class:`Diagnostic` values positioned at the line that
causes them.
Model-based checks (a preserve inside an erase radius) need embeddings and
arrive later through :meth:`ConceptGraph.add_conflict`.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import networkx as nx

from policykit.diagnostics import Diagnostic, Severity
from policykit.policy.categories import resolve_anchor
from policykit.policy.schema import normalize_concept

#: Version of the graph JSON document; bump on breaking change.
GRAPH_FORMAT_VERSION = 1

# Roles a phrase can have (a node may have several: that is how conflicts show).
ERASE, SYNONYM, ASSOCIATED, ANCHOR = "erase", "synonym", "associated", "anchor"
PRESERVE, PROBE, PROBE_TARGET, POLICY = "preserve", "probe", "probe-target", "policy"
#: Roles that mean "this phrase is erased by the policy".
ERASED_ROLES = (ERASE, SYNONYM, ASSOCIATED)

# Edge relations.
ERASES, PRESERVES, SYNONYM_OF, ASSOCIATED_WITH = "erases", "preserves", "synonym-of", "associated-with"
MAPS_TO, PROBES, CONFLICTS_WITH = "maps-to", "probes", "conflicts-with"

PolicyPath = tuple[str | int, ...]


def path_text(path: PolicyPath) -> str:
    """A policy path as a reader writes it: ``erase[0].synonyms[2]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class ConceptGraph:
    """A policy's concepts and their relations, plus the problems found in them.

    ``graph`` is a ``networkx.MultiDiGraph`` (two phrases can be related in
    more than one way); ``diagnostics`` lists cross-entry problems.
    """

    def __init__(self, graph: nx.MultiDiGraph, diagnostics: list[Diagnostic] | None = None) -> None:
        self.graph = graph
        self.diagnostics: list[Diagnostic] = list(diagnostics or [])

    @property
    def name(self) -> str:
        """The policy name the graph was built from."""
        return self.graph.graph.get("name", "")

    @property
    def ok(self) -> bool:
        """True when no diagnostic is an error."""
        return not any(d.severity == "error" for d in self.diagnostics)

    def kinds(self, node: str) -> list[str]:
        """The roles of ``node`` (sorted)."""
        return list(self.graph.nodes[node]["kinds"])

    def nodes_with(self, kind: str) -> list[str]:
        """Ids of the nodes that have role ``kind``, in insertion order."""
        return [n for n, data in self.graph.nodes(data=True) if kind in data["kinds"]]

    def relations(self, relation: str) -> list[tuple[str, str]]:
        """``(source, target)`` of every edge with this relation."""
        return [(u, v) for u, v, r in self.graph.edges(keys=True) if r == relation]

    def add_conflict(self, a: str, b: str, *, code: str, message: str, severity: Severity = "warning",
                     location: tuple[str, int, int] | None = None) -> Diagnostic:
        """Record that phrases ``a`` and ``b`` conflict (a ``conflicts-with`` edge
        plus a diagnostic) and return the diagnostic.

        The hook for checks that need more than the policy text, e.g. a
        preserved concept that falls inside an erased concept's neighbor
        radius once embeddings are available. ``location`` is
        ``(file, line, col)``, usually from ``LoadedPolicy.position``.
        """
        for node in (a, b):
            if node not in self.graph:
                raise KeyError(f"no node {node!r} in the concept graph")
        self.graph.add_edge(a, b, key=CONFLICTS_WITH, relation=CONFLICTS_WITH, code=code)
        file, line, col = location or ("<policy>", 0, 0)
        diagnostic = Diagnostic(code, message, file, line, col, severity)
        self.diagnostics.append(diagnostic)
        return diagnostic

    # ----------------------------------------------------------------- exports

    def to_dict(self) -> dict[str, Any]:
        """Node-link data (``format_version``, ``nodes``, ``edges``, ``diagnostics``),
        with nodes and edges in a stable order."""
        nodes = [{"id": n, **_plain(data)} for n, data in self.graph.nodes(data=True)]
        edges = [{"source": u, "target": v, **_plain(data)} for u, v, data in self.graph.edges(data=True)]
        return {
            "format_version": GRAPH_FORMAT_VERSION,
            "directed": True,
            "multigraph": True,
            "graph": dict(self.graph.graph),
            "nodes": nodes,
            "edges": edges,
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }

    def to_json(self) -> str:
        """The graph as a JSON document (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ConceptGraph":
        """Rebuild a graph written by :meth:`to_json`."""
        doc = json.loads(text)
        if doc.get("format_version") != GRAPH_FORMAT_VERSION:
            raise ValueError(f"unsupported concept graph format_version {doc.get('format_version')!r}")
        graph = nx.MultiDiGraph(**doc.get("graph", {}))
        for node in doc["nodes"]:
            attrs = dict(node)
            graph.add_node(attrs.pop("id"), **attrs)
        for edge in doc["edges"]:
            attrs = dict(edge)
            u, v = attrs.pop("source"), attrs.pop("target")
            graph.add_edge(u, v, key=attrs["relation"], **attrs)
        diagnostics = [Diagnostic(**d) for d in doc.get("diagnostics", [])]
        return cls(graph, diagnostics)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT (for people who have Graphviz)."""
        lines = [f"digraph {_dot_id(self.name or 'policy')} {{", "  rankdir=LR;",
                 '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
                 '  edge [fontname="Helvetica", fontsize=9];']
        conflicted = self._conflicted_nodes()
        for node, data in self.graph.nodes(data=True):
            role = primary_role(data["kinds"])
            extra = ', color="#c62828", penwidth=2' if node in conflicted else ""
            label = _label(data)
            lines.append(f'  {_dot_id(node)} [label={_dot_id(label)}, fillcolor="{ROLE_COLOURS[role]}"{extra}];')
        for u, v, data in self.graph.edges(data=True):
            style = ', color="#c62828", style=dashed' if data["relation"] == CONFLICTS_WITH else ""
            lines.append(f"  {_dot_id(u)} -> {_dot_id(v)} [label={_dot_id(data['relation'])}{style}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_svg(self) -> str:
        """A picture of the graph as standalone SVG, laid out in layers
        (probes | synonyms and associated | erased and preserved | anchors)."""
        return _render_svg(self)

    def write(self, path: str | Path) -> None:
        """Write the graph to ``path``; the suffix (.json, .dot, .svg) picks the format."""
        path = Path(path)
        renderers = {".json": self.to_json, ".dot": self.to_dot, ".gv": self.to_dot, ".svg": self.to_svg}
        if path.suffix.lower() not in renderers:
            raise ValueError(f"unknown graph format {path.suffix!r}: use .json, .dot or .svg")
        path.write_text(renderers[path.suffix.lower()](), encoding="utf-8")

    def _conflicted_nodes(self) -> set[str]:
        return {n for u, v in self.relations(CONFLICTS_WITH) for n in (u, v)}


# --------------------------------------------------------------------- building


class _Builder:
    """Collects nodes, edges and where in the policy each role came from."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.graph = nx.MultiDiGraph(name=loaded.policy.metadata.name)
        # node -> [(role, policy path, erase entry index or None)], in policy order
        self.occurrences: dict[str, list[tuple[str, PolicyPath, int | None]]] = defaultdict(list)
        self.diagnostics: list[Diagnostic] = []
        # (code, u, v): conflict edges, added after all checks ran so that the
        # checks see the graph exactly as the policy wrote it
        self.conflict_edges: list[tuple[str, str, str]] = []

    def node(self, text: str, role: str, path: PolicyPath, entry: int | None = None, node_id: str | None = None) -> str:
        node_id = normalize_concept(text) if node_id is None else node_id
        if node_id not in self.graph:
            self.graph.add_node(node_id, text=text, kinds=[])
        kinds = self.graph.nodes[node_id]["kinds"]
        if role not in kinds:
            kinds.append(role)
            kinds.sort()
        self.occurrences[node_id].append((role, path, entry))
        return node_id

    def edge(self, u: str, v: str, relation: str, **attrs: Any) -> None:
        self.graph.add_edge(u, v, key=relation, relation=relation, **attrs)

    def report(self, code: str, message: str, path: PolicyPath, severity: Severity = "error") -> None:
        file, line, col = self.loaded.position(path)
        self.diagnostics.append(Diagnostic(code, message, str(file), line, col, severity))

    def erased_occurrences(self, node: str) -> list[tuple[str, PolicyPath, int | None]]:
        return [o for o in self.occurrences.get(node, []) if o[0] in ERASED_ROLES]


def build_graph(loaded) -> ConceptGraph:
    """Build the concept graph of a loaded policy and check it for conflicts.

    ``loaded`` is a :class:`~policykit.policy.loader.LoadedPolicy` that loaded
    without error (its ``position`` places the diagnostics).
    """
    if loaded.policy is None:
        raise ValueError("build_graph needs a policy that loaded without errors")
    policy = loaded.policy
    b = _Builder(loaded)
    root = b.node(policy.metadata.name, POLICY, ("metadata", "name"), node_id=f"policy:{policy.metadata.name}")
    anchors: list[tuple[int, str, str, PolicyPath]] = []  # (entry, concept, anchor, anchor path)

    for i, entry in enumerate(policy.erase):
        concept = b.node(entry.concept, ERASE, ("erase", i, "concept"), i)
        b.edge(root, concept, ERASES)
        for j, word in enumerate(entry.synonyms):
            b.edge(b.node(word, SYNONYM, ("erase", i, "synonyms", j), i), concept, SYNONYM_OF)
        for j, word in enumerate(entry.associated):
            b.edge(b.node(word, ASSOCIATED, ("erase", i, "associated", j), i), concept, ASSOCIATED_WITH)
        anchor_text, anchor_path = resolve_anchor(entry, policy.defaults, i)
        anchor = b.node(anchor_text, ANCHOR, anchor_path, i)
        b.edge(concept, anchor, MAPS_TO)
        anchors.append((i, concept, anchor, anchor_path))

    for k, entry in enumerate(policy.preserve):
        b.edge(root, b.node(entry.concept, PRESERVE, ("preserve", k, "concept")), PRESERVES, weight=entry.weight)

    for m, probe in enumerate(policy.audit.probes):
        probe_id = b.node(probe.prompt, PROBE, ("audit", "probes", m, "prompt"),
                          node_id=f"probe:{normalize_concept(probe.prompt)}")
        b.graph.nodes[probe_id]["expect"] = probe.expect.value
        target_text = probe.concept or probe.prompt
        target_path = ("audit", "probes", m, "concept" if probe.concept else "prompt")
        target = normalize_concept(target_text)
        if target not in b.graph:
            b.node(target_text, PROBE_TARGET, target_path)
        b.edge(probe_id, target, PROBES, expect=probe.expect.value)

    _check_duplicates(b)
    _check_shared_words(b, policy)
    _check_erased_and_preserved(b, policy)
    _check_anchors(b, policy, anchors)
    skeletons = _check_confusables(b, policy)
    _check_probes(b, policy, skeletons)
    graph = ConceptGraph(b.graph, b.diagnostics)
    for code, u, v in b.conflict_edges:
        graph.graph.add_edge(u, v, key=CONFLICTS_WITH, relation=CONFLICTS_WITH, code=code)
    return graph


def _conflict_edge(b: _Builder, code: str, u: str, v: str) -> None:
    b.conflict_edges.append((code, u, v))


def _check_duplicates(b: _Builder) -> None:
    for node, occurrences in b.occurrences.items():
        for role, code, severity in ((ERASE, "duplicate-erase", "error"), (PRESERVE, "duplicate-preserve", "warning")):
            paths = [path for r, path, _ in occurrences if r == role]
            for path in paths[1:]:
                b.report(code, f"{b.graph.nodes[node]['text']!r} is listed twice; first at {path_text(paths[0])}"
                         + (" (two entries with possibly different settings)" if role == ERASE else ""),
                         path, severity)


def _check_shared_words(b: _Builder, policy) -> None:
    """A synonym or associated word claimed by two erase entries maps to two anchors."""
    for node in list(b.occurrences):
        erased = b.erased_occurrences(node)
        entries = sorted({entry for _, _, entry in erased})
        if len(entries) < 2 or all(role == ERASE for role, _, _ in erased):
            continue
        first = policy.erase[entries[0]].concept
        for role, path, entry in erased:
            if entry != entries[0] and role != ERASE:
                b.report("shared-word", f"{b.graph.nodes[node]['text']!r} is also erased with {first!r} "
                         f"(erase[{entries[0]}]); it will be mapped towards both entries' anchors",
                         path, "warning")
            elif entry != entries[0] and role == ERASE:
                b.report("shared-word", f"{b.graph.nodes[node]['text']!r} is erased here and also listed as a "
                         f"{erased[0][0]} of {first!r} (erase[{entries[0]}])", path, "warning")


def _erased_as(b: _Builder, policy, node: str) -> str:
    """How a node is erased, for messages: "erased (erase[0].concept)" or
    "a synonym of erased concept 'x' (erase[0].synonyms[1])"."""
    role, path, entry = b.erased_occurrences(node)[0]
    if role == ERASE:
        return f"erased ({path_text(path)})"
    relation = "a synonym of" if role == SYNONYM else "associated with"
    return f"{relation} erased concept {policy.erase[entry].concept!r} ({path_text(path)})"


def _check_erased_and_preserved(b: _Builder, policy) -> None:
    for node, occurrences in b.occurrences.items():
        if not b.erased_occurrences(node):
            continue
        for role, path, _ in occurrences:
            if role == PRESERVE:
                b.report("erase-preserve-conflict",
                         f"{b.graph.nodes[node]['text']!r} is preserved but is {_erased_as(b, policy, node)}", path)
                erased_entry = b.erased_occurrences(node)[0][2]
                _conflict_edge(b, "erase-preserve-conflict", node, normalize_concept(policy.erase[erased_entry].concept))


def _check_anchors(b: _Builder, policy, anchors: list[tuple[int, str, str, PolicyPath]]) -> None:
    # Every erased phrase is pushed towards its entry's anchor: phrase -> anchor.
    mapping = nx.DiGraph()
    for node in b.occurrences:
        for _, _, entry in b.erased_occurrences(node):
            mapping.add_edge(node, anchors[entry][2], entry=entry)
    in_cycle: set[str] = set()
    for component in nx.strongly_connected_components(mapping):
        members = sorted(component)
        if len(members) == 1 and not mapping.has_edge(members[0], members[0]):
            continue
        in_cycle.update(members)
        # start where the policy first writes the cycle, so the message reads in file order
        start = min(members, key=lambda n: min((e for _, _, e in b.erased_occurrences(n)), default=len(anchors)))
        cycle = [u for u, _ in nx.find_cycle(mapping.subgraph(members), source=start)]
        entry = mapping.edges[cycle[0], (cycle + cycle[:1])[1]]["entry"]
        shown = " -> ".join(repr(b.graph.nodes[n]["text"]) for n in cycle + cycle[:1])
        if len(cycle) == 1:
            message = f"{b.graph.nodes[cycle[0]]['text']!r} is mapped to itself: an anchor must differ from what is erased"
        else:
            message = f"anchor cycle {shown}: every anchor in it is itself erased, so nothing is left to map to"
        b.report("anchor-cycle", message, anchors[entry][3])
    for entry, concept, anchor, anchor_path in anchors:
        if anchor in in_cycle or not b.erased_occurrences(anchor):
            continue
        b.report("anchor-erased", f"anchor {b.graph.nodes[anchor]['text']!r} of {policy.erase[entry].concept!r} "
                 f"is itself {_erased_as(b, policy, anchor)}", anchor_path)
        _conflict_edge(b, "anchor-erased", concept, anchor)


def _check_probes(b: _Builder, policy, skeletons: dict[str, list[str]]) -> None:
    """A probe must not expect the opposite of what the policy does to what it shows.

    What a probe shows is its ``concept`` when written; otherwise its prompt,
    and every erased or preserved phrase the prompt contains as whole words
    ("a photo of a red circle" shows "red circle"), spelled as written or
    with look-alike characters (the same TR39 skeleton).
    """
    phrases = _PhraseIndex(n for n in b.occurrences if b.erased_occurrences(n) or _is_preserved(b, n))
    for m, probe in enumerate(policy.audit.probes):
        path = ("audit", "probes", m, "expect")
        probe_id = f"probe:{normalize_concept(probe.prompt)}"
        written = normalize_concept(probe.concept or probe.prompt)
        # (the text as the probe spells it, the policy's phrase it stands for)
        shown = [(written, written)] + ([] if probe.concept else phrases.within(written))
        if probe.expect.value == "preserved":
            hit = next(((spelled, e) for spelled, node in shown
                        if (e := _erased_equivalent(b, node, skeletons))), None)
            if hit is not None:
                spelled, erased = hit
                how = _erased_as(b, policy, erased)
                if erased != spelled:
                    how = f"written like {_text(b, erased)!r}, which is {how}"
                where = " (in its prompt)" if spelled != written else ""
                b.report("probe-conflict", f"probe {probe.prompt!r} expects {spelled!r}{where} to be "
                         f"preserved, but it is {how}", path)
                _conflict_edge(b, "probe-conflict", probe_id, erased)
        elif not any(b.erased_occurrences(node) for _, node in shown):
            kept = next(((spelled, node) for spelled, node in shown if _is_preserved(b, node)), None)
            if kept is not None:
                spelled, node = kept
                where = " (in its prompt)" if spelled != written else ""
                b.report("probe-conflict", f"probe {probe.prompt!r} expects {spelled!r}{where} to be "
                         "erased, but the policy preserves it", path)
                _conflict_edge(b, "probe-conflict", probe_id, node)


def _text(b: _Builder, node: str) -> str:
    return b.graph.nodes[node]["text"] if node in b.graph else node


def _is_preserved(b: _Builder, node: str) -> bool:
    return any(role == PRESERVE for role, _, _ in b.occurrences.get(node, []))


def _erased_equivalent(b: _Builder, target: str, skeletons: dict[str, list[str]]) -> str | None:
    """The erased phrase ``target`` is or looks exactly like; None if none."""
    if b.erased_occurrences(target):
        return target
    return next((other for other in skeletons.get(_skeleton(target), []) if b.erased_occurrences(other)), None)


class _PhraseIndex:
    """Finds which of a set of phrases occur in a text as whole words, compared
    by skeleton (so look-alike spellings match too), in time linear in the
    text: phrases are looked up by their first word."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.by_first: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        for phrase in phrases:
            words = tuple(_skeleton(w) for w in _words(phrase))
            if words:
                self.by_first[words[0]].append((words, phrase))

    def within(self, text: str) -> list[tuple[str, str]]:
        """``(the words as ``text`` spells them, the phrase)`` for each phrase found, in order."""
        words = _words(text)
        shapes = [_skeleton(w) for w in words]
        found = []
        for i, shape in enumerate(shapes):
            for phrase_words, phrase in self.by_first.get(shape, ()):
                if tuple(shapes[i:i + len(phrase_words)]) == phrase_words:
                    found.append((" ".join(words[i:i + len(phrase_words)]), phrase))
        return found


def _words(text: str) -> list[str]:
    # Unicode-aware on purpose: phrases in any script are split into words alike.
    return re.findall(r"\w+", text)


# ------------------------------------------------------------- look-alike text


@lru_cache(maxsize=65536)
def _skeleton(text: str) -> str:
    from policykit.policy.confusables import skeleton

    return skeleton(text)


def _check_confusables(b: _Builder, policy) -> dict[str, list[str]]:
    """Phrases that look the same but are different text (UTS #39 skeletons).

    ``rеd circle`` with a Cyrillic ``е`` and ``red circle`` are two concepts
    to the model and one to a reviewer. When one of them is erased and the
    other kept (preserved, or an anchor), the policy contradicts itself
    where nobody can see it: an error. Otherwise a warning. A word that
    mixes ASCII with look-alike letters of another script is a warning too.
    Returns skeleton -> phrases with it, in policy order, for the probe check.
    """
    from policykit.policy.confusables import describe_lookalikes

    groups: dict[str, list[str]] = defaultdict(list)
    for node in b.occurrences:
        if node.startswith(("probe:", "policy:")) or b.graph.nodes[node]["kinds"] == [PROBE_TARGET]:
            continue  # probes are checked against what they show, in _check_probes
        groups[_skeleton(node)].append(node)
        lookalikes = describe_lookalikes(b.graph.nodes[node]["text"])
        if lookalikes:
            _, path, _ = b.occurrences[node][0]
            b.report("mixed-script", f"{b.graph.nodes[node]['text']!r} mixes scripts: {lookalikes}; it reads as "
                     f"{_skeleton(node)!r} but is different text to the model", path, "warning")
    for members in groups.values():
        for k, node in enumerate(members[1:], 1):
            earlier = members[:k]
            partner = next((o for o in earlier if _erased_vs_kept(b, node, o)), None)
            other = partner or earlier[0]
            _, path, _ = b.occurrences[node][0]
            other_path = b.occurrences[other][0][1]
            shown = (f"{_text(b, node)!r} ({path_text(path)}) looks the same as "
                     f"{_text(b, other)!r} ({path_text(other_path)})")
            if partner is not None:
                erased, kept = (node, other) if b.erased_occurrences(node) else (other, node)
                kept_as = "preserved" if _is_preserved(b, kept) else "an anchor"
                b.report("confusable-conflict", f"{shown} but is different text: {_text(b, erased)!r} is erased and "
                         f"{_text(b, kept)!r} is {kept_as}", path)
                _conflict_edge(b, "confusable-conflict", node, other)
            else:
                b.report("confusable", f"{shown} but is different text; the model treats them as two concepts",
                         path, "warning")
    return groups


def _erased_vs_kept(b: _Builder, a: str, c: str) -> bool:
    def kept(node: str) -> bool:
        return any(role in (PRESERVE, ANCHOR) for role, _, _ in b.occurrences[node])

    return bool((b.erased_occurrences(a) and kept(c)) or (b.erased_occurrences(c) and kept(a)))


# ----------------------------------------------------------------- rendering

#: Fill colour per primary role (also the legend of the picture).
ROLE_COLOURS = {
    ERASE: "#f4a3a3", SYNONYM: "#f8c99b", ASSOCIATED: "#fbe3a4", ANCHOR: "#b8cff2",
    PRESERVE: "#b5e3bd", PROBE: "#dccdf0", PROBE_TARGET: "#e6e6e6", POLICY: "#ffffff",
}
# When a phrase has several roles, the first of these names its colour and column.
_ROLE_PRIORITY = (ERASE, PRESERVE, ANCHOR, SYNONYM, ASSOCIATED, PROBE_TARGET, PROBE, POLICY)
_LAYER = {PROBE: 0, SYNONYM: 1, ASSOCIATED: 1, ERASE: 2, PRESERVE: 2, PROBE_TARGET: 2, ANCHOR: 3}


def primary_role(kinds: Iterable[str]) -> str:
    """The role that decides how a node with several roles is drawn."""
    kinds = set(kinds)
    return next(role for role in _ROLE_PRIORITY if role in kinds)


def _label(data: dict) -> str:
    text = data.get("text", "")
    if text == "" and ANCHOR in data["kinds"]:
        return '"" (empty prompt)'
    return text


def _plain(data: dict) -> dict:
    return {k: (list(v) if isinstance(v, (list, tuple, set)) else v) for k, v in data.items()}


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_ROW, _BOX_H, _CHAR_W, _COL_GAP, _MARGIN, _MAX_CHARS = 34, 24, 7.0, 120, 20, 36
_ARC_STEP = 80  # horizontal room per arc inside a column: one edge label wide


def _render_svg(cg: ConceptGraph) -> str:
    g = cg.graph
    nodes = [n for n, d in g.nodes(data=True) if POLICY not in d["kinds"]]
    layer_of = {n: _LAYER[primary_role(g.nodes[n]["kinds"])] for n in nodes}
    layers: list[list[str]] = [[n for n in nodes if layer_of[n] == k] for k in range(4)]
    # Order: the middle column keeps policy order (erase first, then preserves);
    # each outer column is sorted by the mean row of its neighbours there
    # (barycenter heuristic), which keeps most edges short and uncrossed.
    layers[2].sort(key=lambda n: _LAYER_ORDER.get(primary_role(g.nodes[n]["kinds"]), 9))
    middle = {n: i for i, n in enumerate(layers[2])}
    for k in (1, 3):
        layers[k].sort(key=lambda n: _barycenter(g, n, middle))
    # probes point at any column; rank them by the row of what they probe
    rows = {**middle, **{n: i for i, n in enumerate(layers[1])}, **{n: i for i, n in enumerate(layers[3])}}
    layers[0].sort(key=lambda n: _barycenter(g, n, rows))
    labels = {n: _clip(_label(g.nodes[n])) for n in nodes}
    widths = [max((len(labels[n]) * _CHAR_W + 20 for n in layer), default=0) for layer in layers]
    rows = max((len(layer) for layer in layers), default=0)
    height_body = max(rows, 1) * _ROW
    # a column with edges inside it (conflicts, anchors that are erased) needs
    # room on its right for the arcs that connect them
    arcs = defaultdict(int)
    for u, v in g.edges():
        if u in layer_of and v in layer_of and layer_of[u] == layer_of[v]:
            arcs[layer_of[u]] += 1
    xs, x = [], _MARGIN
    for k, width in enumerate(widths):
        xs.append(x)
        x += width + (_COL_GAP + arcs[k] * _ARC_STEP if width else 0)
    total_w = max(x - _COL_GAP + _MARGIN + 40, 420)
    top = _MARGIN + 30
    pos: dict[str, tuple[float, float, float]] = {}  # node -> (x_left, y_center, width)
    for k, layer in enumerate(layers):
        offset = (height_body - len(layer) * _ROW) / 2
        for i, n in enumerate(layer):
            pos[n] = (xs[k], top + offset + i * _ROW + _ROW / 2, len(labels[n]) * _CHAR_W + 20)
    legend_y = top + height_body + 24
    total_h = legend_y + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w:.0f}" height="{total_h:.0f}" '
           f'viewBox="0 0 {total_w:.0f} {total_h:.0f}" font-family="Helvetica, Arial, sans-serif">',
           "<defs>",
           '<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>',
           "</defs>",
           '<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="{_MARGIN}" y="{_MARGIN + 8}" font-size="14" font-weight="bold">'
           f"{html.escape(cg.name)}: concept graph</text>"]
    edge_parts, label_parts = [], []
    drawn_between: dict[frozenset, int] = defaultdict(int)  # parallel edges fan out
    arcs_drawn: dict[int, int] = defaultdict(int)
    for u, v, data in g.edges(data=True):
        if u not in pos or v not in pos:
            continue
        fan = drawn_between[frozenset((u, v))]
        drawn_between[frozenset((u, v))] += 1
        relation = data["relation"]
        colour = "#c62828" if relation == CONFLICTS_WITH else "#666"
        dash = ' stroke-dasharray="4 3"' if relation in (CONFLICTS_WITH, PROBES) else ""
        (ux, uy, uw), (vx, vy, vw) = pos[u], pos[v]
        if layer_of[u] != layer_of[v]:  # between columns: an S-curve, right edge to left edge
            forward = layer_of[u] < layer_of[v]
            x1, x2 = (ux + uw, vx) if forward else (ux, vx + vw)
            y1, y2 = uy, vy
            # leave the source column straight, then curve only in the gap
            # between columns, so neither curves nor labels cover other nodes
            edge_x = xs[layer_of[u]] + widths[layer_of[u]] if forward else xs[layer_of[u]]
            stub = f"M{x1:.1f},{y1:.1f} L{edge_x:.1f},{y1:.1f} " if abs(edge_x - x1) > 0.5 else ""
            x1 = edge_x
            c1, c2 = ((x1 + x2) / 2, y1 - 14 * fan), ((x1 + x2) / 2, y2 - 14 * fan)
            # label near the source end, where edges are still a row apart
            at = 0.22 + 0.2 * fan
        else:  # same column: arc out to the right of the column
            # each arc in a column bulges further out, so arcs and labels do not stack
            column_right = xs[layer_of[u]] + widths[layer_of[u]]
            bulge_x = column_right + 40 + _ARC_STEP * arcs_drawn[layer_of[u]]
            arcs_drawn[layer_of[u]] += 1
            x1, y1, x2, y2 = ux + uw, uy, vx + vw, vy
            c1, c2 = (bulge_x, y1), (bulge_x, y2)
            at, stub = 0.5, ""
        d = f"{stub or f'M{x1:.1f},{y1:.1f} '}C{c1[0]:.1f},{c1[1]:.1f} {c2[0]:.1f},{c2[1]:.1f} {x2:.1f},{y2:.1f}"
        mx, my = _bezier_point((x1, y1), c1, c2, (x2, y2), at)
        if not stub and layer_of[u] == layer_of[v]:
            mx += len(relation) * 2.5 + 4  # beside the apex, not across the arc
        edge_parts.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.2"{dash} '
                          f'marker-end="url(#arrow)"/>')
        # a white plate under the label keeps it readable where edges cross
        width = len(relation) * 5.0 + 4
        label_parts.append(f'<rect x="{mx - width / 2:.1f}" y="{my - 6:.1f}" width="{width:.1f}" height="11" '
                           f'fill="#ffffff" fill-opacity="0.85"/>'
                           f'<text x="{mx:.1f}" y="{my + 3:.1f}" font-size="9" fill="{colour}" '
                           f'text-anchor="middle">{html.escape(relation)}</text>')
    out += edge_parts
    conflicted = cg._conflicted_nodes()
    for n in nodes:
        x0, yc, w = pos[n]
        role = primary_role(g.nodes[n]["kinds"])
        stroke = 'stroke="#c62828" stroke-width="2.5"' if n in conflicted else 'stroke="#444" stroke-width="1"'
        title = html.escape(f"{g.nodes[n]['text']} ({', '.join(g.nodes[n]['kinds'])})")
        out.append(f'<g><title>{title}</title><rect x="{x0:.1f}" y="{yc - _BOX_H / 2:.1f}" width="{w:.1f}" '
                   f'height="{_BOX_H}" rx="6" fill="{ROLE_COLOURS[role]}" {stroke}/>'
                   f'<text x="{x0 + w / 2:.1f}" y="{yc + 4:.1f}" font-size="12" text-anchor="middle">'
                   f"{html.escape(labels[n])}</text></g>")
    out += label_parts
    lx = _MARGIN
    for role in (ERASE, SYNONYM, ASSOCIATED, ANCHOR, PRESERVE, PROBE, PROBE_TARGET):
        out.append(f'<rect x="{lx}" y="{legend_y - 10}" width="14" height="14" rx="3" fill="{ROLE_COLOURS[role]}" '
                   f'stroke="#444"/><text x="{lx + 18}" y="{legend_y + 1}" font-size="11">{role}</text>')
        lx += 30 + len(role) * 7
    out.append("</svg>")
    return "\n".join(out) + "\n"


_LAYER_ORDER = {ERASE: 0, PROBE_TARGET: 1, PRESERVE: 2}


def _bezier_point(p0, p1, p2, p3, t: float) -> tuple[float, float]:
    """The point at parameter ``t`` of a cubic Bezier curve."""
    u = 1 - t
    return tuple(u ** 3 * a + 3 * u * u * t * b + 3 * u * t * t * c + t ** 3 * d
                 for a, b, c, d in zip(p0, p1, p2, p3))


def _barycenter(g: nx.MultiDiGraph, node: str, reference: dict[str, int]) -> float:
    rows = [reference[m] for m in (*g.successors(node), *g.predecessors(node)) if m in reference]
    return sum(rows) / len(rows) if rows else float(len(reference))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 1] + "\u2026"
