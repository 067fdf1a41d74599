"""Reading untrusted YAML into a tree of positioned nodes, safely.

Policies arrive in pull requests, so this reader treats every byte as
hostile. It never constructs Python objects from tags, never expands aliases
and stops early on anything unbounded, turning each problem into a
:class:`~policykit.diagnostics.Diagnostic` at ``file:line:col``:

- files over :data:`MAX_FILE_BYTES`, bytes that are not UTF-8, NUL and other
  control characters;
- YAML syntax errors, more than one document, an empty file;
- anchors and aliases (rejected outright: policies are short, and an alias
  is how "billion laughs" documents blow up memory), explicit tags
  (``!!python/object`` and friends), complex (non-scalar) keys, duplicate keys;
- nesting deeper than :data:`MAX_DEPTH` (``[[[[...`` would otherwise exhaust
  the stack of a recursive composer) and more than :data:`MAX_NODES` values;
- numbers that are not finite (``1e999``, ``.nan``, ``.inf``) or have more
  than :data:`MAX_INT_DIGITS` digits.

It works on ruamel.yaml's *event* stream and composes the tree itself,
iteratively, so each limit is checked before any memory is spent on what
lies beyond it. Plain scalars are resolved with the YAML 1.2 core schema.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from policykit.diagnostics import Diagnostic

#: Largest policy file accepted, in bytes (1 MiB; real policies are a few KiB).
MAX_FILE_BYTES = 1024 * 1024
#: Deepest nesting of mappings and sequences (a policy needs about 5).
MAX_DEPTH = 32
#: Most YAML values (scalars, mappings, sequences, keys included) in one file.
#: This, not the byte size, bounds the time a hostile file can take. One cap
#: for every environment, so that whether a policy is valid does not depend on
#: whether ruamel.yaml.clib is installed: at the cap a file is read in about
#: 0.1 s with ruamel's C parser (libyaml) and about 2 s with the pure-Python
#: fallback. Real policies hold a few hundred values; a 1,000-concept brand
#: list about 20,000.
MAX_NODES = 50_000


def _c_parser_available() -> bool:
    # ruamel.yaml.clib (libyaml) emits the same events with the same marks,
    # about twenty times faster than the pure-Python scanner.
    try:
        import _ruamel_yaml  # noqa: F401  (the extension module of ruamel.yaml.clib)
    except ImportError:
        return False
    return True


#: Whether events come from libyaml; only speed depends on it, never a verdict.
_HAVE_C_PARSER = _c_parser_available()
#: Most digits an integer may have (a seed needs 10).
MAX_INT_DIGITS = 30
#: Most diagnostics reported for one file; the rest are counted in one note.
MAX_DIAGNOSTICS = 200


@dataclass(frozen=True)
class Mark:
    """A position in a source file; ``line`` and ``col`` are 1-based."""

    file: str
    line: int
    col: int


@dataclass
class Node:
    """One YAML value with the position it was written at.

    ``value`` is a ``dict[str, Node]`` for a mapping, a ``list[Node]`` for a
    sequence, or a plain scalar (``None``, ``bool``, ``int``, ``float``, ``str``).
    ``key_mark`` is where its key is, when the node is a mapping value.
    """

    value: Any
    mark: Mark
    key_mark: Mark | None = None

    def plain(self) -> Any:
        """The node as plain Python data (dicts, lists, scalars)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


@dataclass
class ParsedYaml:
    """The outcome of reading one file: its text, its tree, its problems."""

    file: str
    text: str | None
    root: Node | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    #: Marks of values already reported as bad, so schema errors at the same
    #: place (a "not a number" after "not finite") are not reported twice.
    reported: set[Mark] = field(default_factory=set)


_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_TRUE = re.compile(r"^(?:true|True|TRUE)$")
_FALSE = re.compile(r"^(?:false|False|FALSE)$")
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")

# YAML 1.2 printable characters (c-printable), minus the byte-order mark
# anywhere but at the start: anything else is a control character.
# In a string value, after escapes are decoded ("\0", "\x07", "\ud800"):
# control characters (newline and tab excepted) and lone surrogates.
_BAD_IN_STRING = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def decode_source(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """UTF-8 text of ``data``, or a diagnostic at the first bad byte or character."""
    if len(data) > MAX_FILE_BYTES:
        return None, [Diagnostic("file-too-large",
                                 f"file is {len(data)} bytes; policies may be at most {MAX_FILE_BYTES} bytes (1 MiB)",
                                 file)]
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(data, exc.start)
        return None, [Diagnostic("not-utf8", f"byte 0x{data[exc.start]:02x} is not valid UTF-8; policies must be UTF-8 text",
                                 file, line, col)]
    bad = _NOT_PRINTABLE.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        what = "NUL byte" if bad.group() == "\x00" else f"control character U+{ord(bad.group()):04X}"
        return None, [Diagnostic("invalid-character", f"{what} is not allowed in a policy (binary file?)",
                                 file, line, col)]
    return text, []


def _byte_position(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    line = data.count(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return line, col


def parse_yaml(data: bytes, file: str) -> ParsedYaml:
    """Read ``data`` (the bytes of ``file``) into a positioned tree.

    Never raises for bad input; ``root`` is None when no usable tree could be
    built (the diagnostics say why). Runs in time and memory linear in the
    size of the input, which :data:`MAX_FILE_BYTES` bounds.
    """
    text, diagnostics = decode_source(data, file)
    if text is None:
        return ParsedYaml(file, None, None, diagnostics)
    parsed = _Composer(file, text).compose()
    if len(parsed.diagnostics) > MAX_DIAGNOSTICS:
        extra = len(parsed.diagnostics) - MAX_DIAGNOSTICS
        parsed.diagnostics = parsed.diagnostics[:MAX_DIAGNOSTICS] + [
            Diagnostic("too-many-problems", f"{extra} more problems not shown", file, severity="note")]
    return parsed





class _Frame:
    """A mapping or sequence being composed, and the key awaiting its value."""

    __slots__ = ("node", "key", "key_mark", "skip_value")

    def __init__(self, node: Node):
        self.node = node
        self.key: str | None = None
        self.key_mark: Mark | None = None
        self.skip_value = False


class _Composer:
    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text
        self.diagnostics: list[Diagnostic] = []
        self.reported: set[Mark] = set()

    def error(self, code: str, message: str, mark: Mark) -> None:
        self.diagnostics.append(Diagnostic(code, message, self.file, mark.line, mark.col))

    def mark(self, event: Any) -> Mark:
        m = event.start_mark
        return Mark(self.file, m.line + 1, m.column + 1)

    def compose(self) -> ParsedYaml:
        from ruamel.yaml import YAML
        from ruamel.yaml.error import MarkedYAMLError, YAMLError

        root: Node | None = None
        stack: list[_Frame] = []
        documents = 0
        nodes = 0
        try:
            for event in YAML(typ="safe", pure=not _HAVE_C_PARSER).parse(self.text):
                kind = type(event).__name__
                if kind == "DocumentStartEvent":
                    documents += 1
                    if documents > 1:
                        self.error("multiple-documents",
                                   "a policy file holds one YAML document; found a second one here", self.mark(event))
                        break
                    continue
                if kind in ("StreamStartEvent", "StreamEndEvent", "DocumentEndEvent"):
                    continue
                if kind in ("MappingEndEvent", "SequenceEndEvent"):
                    stack.pop()
                    continue
                nodes += 1
                if nodes > MAX_NODES:
                    self.error("too-many-values", f"more than {MAX_NODES} YAML values in one file", self.mark(event))
                    return ParsedYaml(self.file, self.text, None, self.diagnostics, self.reported)
                node = self._node_for(event, kind)
                if node is None:  # nesting too deep: nothing after it can be trusted
                    return ParsedYaml(self.file, self.text, None, self.diagnostics, self.reported)
                if not stack:
                    root = node
                else:
                    self._attach(stack[-1], node, event, kind)
                if kind in ("MappingStartEvent", "SequenceStartEvent"):
                    stack.append(_Frame(node))
                    if len(stack) > MAX_DEPTH:
                        self.error("too-deep", f"nesting deeper than {MAX_DEPTH} levels", node.mark)
                        return ParsedYaml(self.file, self.text, None, self.diagnostics, self.reported)
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
            self.diagnostics.append(Diagnostic("yaml-syntax", f"invalid YAML: {problem}", self.file, line, col))
            return ParsedYaml(self.file, self.text, None, self.diagnostics, self.reported)
        except (YAMLError, RecursionError, ValueError) as exc:
            self.diagnostics.append(Diagnostic("yaml-syntax", f"invalid YAML: {exc}", self.file))
            return ParsedYaml(self.file, self.text, None, self.diagnostics, self.reported)
        if root is None:
            self.diagnostics.append(Diagnostic("empty-file", "the file holds no YAML document", self.file))
        return ParsedYaml(self.file, self.text, root, self.diagnostics, self.reported)

    def _node_for(self, event: Any, kind: str) -> Node | None:
        mark = self.mark(event)
        if getattr(event, "anchor", None):
            what = "alias" if kind == "AliasEvent" else "anchor"
            self.error(f"yaml-{what}", f"YAML {what}s (&{event.anchor} / *{event.anchor}) are not allowed in policies; "
                       "write the value out", mark)
            self.reported.add(mark)
        if kind == "AliasEvent":
            return Node(None, mark)
        tag = getattr(event, "tag", None)
        if tag is not None:
            self.error("yaml-tag", f"YAML tags ({_short_tag(tag)}) are not allowed in policies", mark)
            self.reported.add(mark)
        if kind == "MappingStartEvent":
            return Node({}, mark)
        if kind == "SequenceStartEvent":
            return Node([], mark)
        return Node(self._scalar(event, mark), mark)

    def _scalar(self, event: Any, mark: Mark) -> Any:
        text = event.value
        bad = _BAD_IN_STRING.search(text)
        if bad:
            self.error("invalid-character", f"escaped control character U+{ord(bad.group()):04X} in a string", mark)
            self.reported.add(mark)
            return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        # Plain scalars have style None (pure parser) or "" (C parser).
        if event.style or event.tag is not None:  # quoted or block scalar: a string
            return text
        if _NULL.match(text):
            return None
        if _TRUE.match(text):
            return True
        if _FALSE.match(text):
            return False
        if _INT10.match(text) or _INT8.match(text) or _INT16.match(text):
            if len(text.lstrip("+-")) > MAX_INT_DIGITS:
                self.error("number-too-large", f"integer with {len(text)} digits; at most {MAX_INT_DIGITS} are allowed", mark)
                self.reported.add(mark)
                return text
            return int(text, 0) if not _INT10.match(text) else int(text)
        if _FLOAT.match(text) or _INF.match(text) or _NAN.match(text):
            value = float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                          .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))
            if not math.isfinite(value):
                self.error("not-finite", f"{_clip(text)} is not a finite number", mark)
                self.reported.add(mark)
                return text
            return value
        return text

    def _attach(self, frame: _Frame, node: Node, event: Any, kind: str) -> None:
        parent = frame.node
        if isinstance(parent.value, list):
            parent.value.append(node)
            return
        if frame.key is None and not frame.skip_value:
            # This node is a key.
            if kind != "ScalarEvent":
                self.error("complex-key", "mapping keys must be plain text, not a mapping or a list", node.mark)
                frame.skip_value = True
                return
            key = event.value
            if key in parent.value:
                first = parent.value[key].key_mark
                where = f" (first at line {first.line})" if first else ""
                self.error("duplicate-key", f"duplicate key '{_clip(key)}'{where}", node.mark)
                frame.skip_value = True
                return
            frame.key, frame.key_mark = key, node.mark
            return
        if frame.skip_value:
            frame.skip_value = False
            return
        node.key_mark = frame.key_mark
        parent.value[frame.key] = node
        frame.key = frame.key_mark = None


def _short_tag(tag: str) -> str:
    if tag.startswith("tag:yaml.org,2002:"):
        return "!!" + tag[len("tag:yaml.org,2002:"):]
    return _clip(tag)


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
