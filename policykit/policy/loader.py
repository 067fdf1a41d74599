"""Loading policies: YAML with positions, ``extends``, and diagnostics.

:func:`load_policy` reads a policy and every file it ``extends`` (each with
:mod:`policykit.policy.yaml_tree`, which refuses hostile input), merges them,
validates the result against :class:`~policykit.policy.schema.Policy` and
reports every problem of every file at once, each at the ``file:line:col``
of the key or value at fault.

Merge rules for ``extends`` (also in docs/policy-reference.md):

- the bases are merged in the order listed, then the extending file on top;
  a base may itself extend others (depth at most :data:`MAX_EXTENDS_DEPTH`,
  at most :data:`MAX_EXTENDS_FILES` files in all; a file reached twice is
  merged once, at its first place);
- mappings merge key by key, recursively; scalars and other lists replace;
- ``erase`` and ``preserve`` merge by concept (compared after
  :func:`~policykit.policy.schema.normalize_concept`): an entry whose concept
  is already there replaces that entry in place, new concepts are appended;
- ``audit.probes`` concatenate;
- ``extends`` itself is not inherited.

Paths in ``extends`` are relative to the file that lists them and must stay
inside the directory tree of the top-level policy: absolute paths, ``..``
that leaves it and symlinks that resolve outside it are errors. Base files
are validated as fragments: they need not be complete policies, but unknown
keys and bad values in them are reported at their own position.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from policykit.diagnostics import Diagnostic, sort_diagnostics
from policykit.policy.yaml_tree import MAX_DIAGNOSTICS, MAX_FILE_BYTES, Mark, Node, parse_yaml

#: Reads a file's bytes; replaced for ``diff --against GITREV`` by a git reader.
FileReader = Callable[[Path], bytes]

#: Longest chain of ``extends`` (a file, its base, the base's base, ...).
MAX_EXTENDS_DEPTH = 8
#: Most files one policy may pull in through ``extends``, itself included.
MAX_EXTENDS_FILES = 32

#: Lists merged entry by entry, keyed by their normalized concept.
_MERGE_BY_CONCEPT = {("erase",), ("preserve",)}
#: Lists whose entries from bases and from the extending file are concatenated.
_CONCATENATE = {("audit", "probes")}


@dataclass
class LoadedPolicy:
    """The outcome of loading one policy file (and everything it extends)."""

    path: Path
    #: The validated policy, or None when any error was found.
    policy: Any | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: This file and every file it extends, in merge order (bases first).
    sources: list[Path] = field(default_factory=list)
    #: The merged plain data (after ``extends``), before validation.
    data: dict | None = None
    #: The merged data as positioned nodes (each remembers its file).
    tree: Node | None = None
    #: Source text of every file read, by the file name diagnostics use.
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the policy loaded with no error."""
        return self.policy is not None

    def position(self, path: tuple[str | int, ...]) -> tuple[str, int, int]:
        """``(file, line, col)`` of the value at ``path`` in the merged data,
        e.g. ``("preserve", 2, "concept")``, in the file that supplied it.

        When ``path`` goes past what the file holds (a field left out), the
        deepest value that exists is used; ``(file, 0, 0)`` when there is none.
        """
        node, _ = _walk(self.tree, path)
        if node is None:
            return (str(self.path), 0, 0)
        return (node.mark.file, node.mark.line, node.mark.col)

    def key_position(self, path: tuple[str | int, ...]) -> tuple[str, int, int]:
        """Like :meth:`position`, but of the *key* of the value at ``path``
        (``radius:`` rather than ``0.3``), when the value has one."""
        node, _ = _walk(self.tree, path)
        if node is None:
            return (str(self.path), 0, 0)
        mark = node.key_mark or node.mark
        return (mark.file, mark.line, mark.col)


def load_policy(path: str | Path, *, read_file: FileReader | None = None) -> LoadedPolicy:
    """Load, merge (``extends``) and validate the policy at ``path``.

    ``read_file`` reads every file (the policy and its bases); by default the
    file system, refusing files over the size cap before reading them.
    Never raises for bad input: every problem becomes a Diagnostic.
    """
    return _Loader(Path(path), read_file).load()


class NotARegularFile(OSError):
    """A policy path names a FIFO, a device, a socket or a directory."""


def _read_from_disk(path: Path) -> bytes:
    """The bytes of the regular file at ``path`` (at most the cap plus one).

    Opened without blocking and checked on the open descriptor: a FIFO named
    by ``extends`` would otherwise block ``open`` (and so ``validate``)
    forever waiting for a writer, and a device such as ``/dev/zero`` never
    ends. Checking the descriptor, not the path, leaves no gap between the
    check and the read for the file to be swapped.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{_file_kind(mode)}, not a regular file")
        # Read one byte more than the cap, so an oversized file is detected
        # without reading all of it into memory.
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "a special file")


class _Loader:
    """One load: the files read so far, their trees and every diagnostic."""

    def __init__(self, top: Path, read_file: FileReader | None):
        self.top = top
        self.on_disk = read_file is None
        self.read = read_file or _read_from_disk
        self.root_dir = os.path.abspath(os.path.normpath(str(top.parent) or "."))
        self.diagnostics: list[Diagnostic] = []
        self.reported: set[Mark] = set()
        self.texts: dict[str, str] = {}
        self.trees: dict[str, Node] = {}  # file -> its tree, in merge order
        self.sources: list[Path] = []
        self.failed = False  # some file could not be read or parsed
        self.files_read = 0

    def load(self) -> LoadedPolicy:
        top_name = str(self.top)
        self._visit(self.top, top_name, chain=[], via=None)
        merged = self._merge_all(top_name)
        policy = self._validate(merged, top_name)
        self.diagnostics = _bounded(sort_diagnostics(_dedupe(self.diagnostics)))
        return LoadedPolicy(self.top, policy, self.diagnostics, self.sources,
                            merged.plain() if merged is not None and isinstance(merged.value, dict) else None,
                            merged, self.texts)

    # -- reading files and following extends --------------------------------

    def _visit(self, path: Path, name: str, chain: list[str], via: Mark | None) -> None:
        key = os.path.abspath(name)
        if key in chain:
            names = [os.path.relpath(c, self.root_dir) for c in chain[chain.index(key):]] + [os.path.relpath(key, self.root_dir)]
            self._error("extends-cycle", "extends cycle: " + " -> ".join(names), via)
            return
        if name in self.trees:
            return  # reached twice (a diamond): merged once, at its first place
        if len(chain) > MAX_EXTENDS_DEPTH:
            self._error("extends-too-deep", f"extends chain deeper than {MAX_EXTENDS_DEPTH} files", via)
            return
        if self.files_read >= MAX_EXTENDS_FILES:
            self._error("extends-too-many", f"more than {MAX_EXTENDS_FILES} files through extends", via)
            return
        self.files_read += 1
        tree = self._read_tree(path, name, via)
        if tree is None:
            return
        for ref, mark in self._extends_refs(tree):
            base = self._resolve_ref(ref, name, mark)
            if base is not None:
                self._visit(Path(base), base, chain + [key], mark)
        self.trees[name] = tree
        self.sources.append(path)

    def _read_tree(self, path: Path, name: str, via: Mark | None) -> Node | None:
        try:
            data = self.read(path)
        except FileNotFoundError:
            self._error("file-not-found", f"no such file: {name}", via, name)
            self.failed = True
            return None
        except NotARegularFile as exc:
            self._error("not-a-file", f"cannot read {name}: it is {exc}", via, name)
            self.failed = True
            return None
        except (OSError, KeyError, ValueError) as exc:
            self._error("read-error", f"cannot read {name}: {exc.__class__.__name__}: {exc}", via, name)
            self.failed = True
            return None
        parsed = parse_yaml(data, name)
        self.diagnostics.extend(parsed.diagnostics)
        self.reported |= parsed.reported
        if parsed.text is not None:
            self.texts[name] = parsed.text
        if parsed.root is None:
            self.failed = True
            return None
        if not isinstance(parsed.root.value, dict):
            self._error("not-a-mapping", f"a policy is a mapping of keys (apiVersion, kind, ...), not {_describe(parsed.root.value)}",
                        parsed.root.mark)
            self.failed = True
            return None
        return parsed.root

    def _extends_refs(self, tree: Node) -> list[tuple[str, Mark]]:
        node = tree.value.get("extends")
        if node is None or node.value is None:
            return []
        if not isinstance(node.value, list):
            self._error("wrong-type", f"extends: expected a list of paths, got {_describe(node.value)}", node.mark)
            self.reported.add(node.mark)
            self.failed = True
            return []
        refs = []
        for item in node.value:
            if item.mark in self.reported:
                # Already refused by the YAML reader (an escaped NUL or other
                # control character): such a path must never reach the file system.
                self.failed = True
                continue
            if isinstance(item.value, str) and item.value.strip():
                refs.append((item.value.strip(), item.mark))
            else:
                self._error("wrong-type", f"extends: expected a path, got {_describe(item.value)}", item.mark)
                self.reported.add(item.mark)
                self.failed = True
        return refs

    def _resolve_ref(self, ref: str, name: str, mark: Mark) -> str | None:
        """The file name of base ``ref`` listed in ``name``, or None (reported) if it may not be read."""
        if os.path.isabs(ref) or ref.startswith(("/", "\\", "~")):
            self._error("extends-outside-root", f"extends: '{ref}' is absolute; use a path relative to this file", mark)
            return None
        base = os.path.normpath(os.path.join(os.path.dirname(name), ref))
        inside = os.path.relpath(os.path.abspath(base), self.root_dir)
        if inside == os.pardir or inside.startswith(os.pardir + os.sep):
            self._error("extends-outside-root",
                        f"extends: '{ref}' leaves the policy's directory ({os.path.relpath(self.root_dir)})", mark)
            return None
        if self.on_disk:
            real_root = os.path.realpath(self.root_dir)
            real = os.path.realpath(base)
            if os.path.commonpath([real_root, real]) != real_root:
                self._error("extends-outside-root", f"extends: '{ref}' is a link that resolves outside the policy's directory", mark)
                return None
        return base

    def _error(self, code: str, message: str, mark: Mark | None, file: str | None = None) -> None:
        if code.startswith("extends-"):
            # A base was left out: the merged policy would miss its content,
            # so only the files themselves are checked (as fragments).
            self.failed = True
        if mark is None:
            self.diagnostics.append(Diagnostic(code, message, file or str(self.top)))
        else:
            self.diagnostics.append(Diagnostic(code, message, mark.file, mark.line, mark.col))

    # -- merging ------------------------------------------------------------

    def _merge_all(self, top_name: str) -> Node | None:
        merged: Node | None = None
        for name, tree in self.trees.items():
            if name != top_name:
                tree = Node({k: v for k, v in tree.value.items() if k != "extends"}, tree.mark, tree.key_mark)
            merged = tree if merged is None else merge_nodes(merged, tree)
        return merged

    # -- validation -----------------------------------------------------------

    def _validate(self, merged: Node | None, top_name: str) -> Any | None:
        from policykit.policy.schema import Policy

        # Bases alone, as fragments: their bad keys and values are found even
        # where a later file replaces them, and reported in their own file.
        for name, tree in self.trees.items():
            if name != top_name or self.failed:
                self.diagnostics.extend(_schema_diagnostics(Policy, tree, self.reported, fragment=True)[1])
        if merged is None or self.failed:
            return None  # a file is missing: "missing field" errors would mislead
        policy, diagnostics = _schema_diagnostics(Policy, merged, self.reported, fragment=False)
        self.diagnostics.extend(diagnostics)
        if any(d.severity == "error" for d in self.diagnostics):
            return None
        return policy


def merge_nodes(base: Node, child: Node, path: tuple[str, ...] = ()) -> Node:
    """``child`` merged over ``base`` by the ``extends`` rules (module docstring)."""
    if isinstance(base.value, dict) and isinstance(child.value, dict):
        out = dict(base.value)
        for key, node in child.value.items():
            out[key] = merge_nodes(out[key], node, path + (key,)) if key in out else node
        return Node(out, child.mark, child.key_mark)
    if isinstance(base.value, list) and isinstance(child.value, list):
        if path in _CONCATENATE:
            return Node(base.value + child.value, child.mark, child.key_mark)
        if path in _MERGE_BY_CONCEPT:
            return Node(_merge_by_concept(base.value, child.value), child.mark, child.key_mark)
    return child


def _merge_by_concept(base: list[Node], child: list[Node]) -> list[Node]:
    from policykit.policy.schema import normalize_concept

    def concept(node: Node) -> str | None:
        if isinstance(node.value, dict):
            c = node.value.get("concept")
            if c is not None and isinstance(c.value, str):
                return normalize_concept(c.value)
        return None

    out = list(base)
    index = {concept(n): i for i, n in enumerate(out) if concept(n) is not None}
    for node in child:
        key = concept(node)
        if key is not None and key in index:
            out[index[key]] = node
        else:
            if key is not None:
                index[key] = len(out)
            out.append(node)
    return out


def _walk(tree: Node | None, path: tuple[str | int, ...]) -> tuple[Node | None, int]:
    """The deepest node along ``path`` and how many parts of ``path`` it used."""
    node = tree
    used = 0
    for part in path:
        if node is None:
            break
        if isinstance(node.value, dict) and isinstance(part, str) and part in node.value:
            node = node.value[part]
        elif isinstance(node.value, list) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            break
        used += 1
    return node, used


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def _bounded(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """At most :data:`MAX_DIAGNOSTICS` problems, then one note counting the rest."""
    problems = [d for d in diagnostics if d.code != "too-many-problems"]
    hidden = sum(int(d.message.split()[0]) for d in diagnostics if d.code == "too-many-problems")
    hidden += max(0, len(problems) - MAX_DIAGNOSTICS)
    if not hidden:
        return problems
    return problems[:MAX_DIAGNOSTICS] + [Diagnostic("too-many-problems", f"{hidden} more problems not shown",
                                                    problems[0].file, severity="note")]


def _schema_diagnostics(model: Any, tree: Node, reported: set[Mark], *, fragment: bool) -> tuple[Any | None, list[Diagnostic]]:
    """Validate ``tree`` against ``model``; errors become positioned diagnostics.

    Validation is strict and goes through JSON, so ``"0.3"`` is not a number
    and ``true`` not an integer, while enums still accept their string values.
    In ``fragment`` mode (base files) missing fields are not errors.
    """
    import json

    from pydantic import ValidationError

    from policykit.policy.schema_errors import describe_error

    try:
        return model.model_validate_json(json.dumps(tree.plain()), strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    diagnostics = []
    for error in errors:
        loc = tuple(error["loc"])
        if fragment and (error["type"] == "missing" or (error["type"] == "too_short" and loc == ("erase",))):
            continue
        node, used = _walk(tree, loc)
        if node is None:
            continue
        if node.mark in reported:
            continue  # already reported by the YAML reader (not finite, alias...)
        if error["type"] == "extra_forbidden" and used == len(loc):
            mark = node.key_mark or node.mark
        elif error["type"] == "missing":
            mark = node.key_mark or node.mark
        else:
            mark = node.mark
            # A check across the fields of a mapping ("beyond_radius must be
            # larger than radius") is shown at the field its message starts with.
            first_word = str(error.get("msg", "")).removeprefix("Value error, ").split(" ", 1)[0]
            if error["type"] == "value_error" and isinstance(node.value, dict) and first_word in node.value:
                mark = node.value[first_word].key_mark or mark
        code, message = describe_error(model, error, loc[:used] if error["type"] != "missing" else loc)
        diagnostics.append(Diagnostic(code, message, mark.file, mark.line, mark.col))
    return None, diagnostics


def _describe(value: Any) -> str:
    from policykit.policy.schema_errors import describe_value

    return describe_value(value)
