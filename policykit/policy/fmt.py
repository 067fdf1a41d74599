"""Canonical formatting of policy files, keeping comments.

The canonical form of a policy:

- keys in the order the schema declares them, at every level (unknown keys
  are kept, after the known ones, in the order they were written);
- block style for every mapping and every list of mappings (flow
  ``{a: 1}`` becomes a block); a list of plain values (``synonyms:
  [crimson, scarlet]``) keeps the style it was written in, so short word
  lists can stay on one line;
- 2-space indentation, with list entries indented under their key::

      erase:
        - concept: red circle
          synonyms:
            - crimson circle

- comments, quoting and folded text kept as written; no line wrapping.

Formatting is idempotent: formatting formatted text changes nothing.
When keys are reordered, a comment at the end of a line stays with that
line's value, and comment lines (and blank lines) above a key move with the
key. ruamel.yaml stores such lines at the end of whatever came before the
key, so :func:`_detach_leading_comments` moves them onto the key first.
"""

from __future__ import annotations

import io
from typing import Any

from policykit.diagnostics import Diagnostic
from policykit.policy.yaml_tree import parse_yaml

#: Stands for "after the last key" among the keys of a mapping.
_END = object()



def format_policy(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """The canonical text of a policy file, or None and the diagnostics why not.

    The input is first read by :func:`~policykit.policy.yaml_tree.parse_yaml`,
    so hostile YAML (aliases, tags, duplicate keys, deep nesting, binary) is
    refused before ruamel.yaml's round-trip loader ever sees it.
    """
    parsed = parse_yaml(data, file)
    # Any problem the safe reader finds is refused, even a value one such as
    # 1e999: the round-trip writer would rewrite it (as .inf), not keep it.
    errors = [d for d in parsed.diagnostics if d.severity == "error"]
    if errors or parsed.root is None or parsed.text is None:
        return None, errors or parsed.diagnostics
    if not isinstance(parsed.root.value, dict):
        return None, [Diagnostic("not-a-mapping", "a policy is a mapping of keys, not a list or a single value",
                                 file, parsed.root.mark.line, parsed.root.mark.col)]
    from ruamel.yaml.error import YAMLError

    from policykit.policy.schema import Policy

    yaml = _round_trip_yaml()
    try:
        document = yaml.load(parsed.text)
        _canonicalize(document, Policy)
        out = io.StringIO()
        yaml.dump(document, out)
    except (YAMLError, ValueError, TypeError) as exc:  # the reader accepted what ruamel's round trip cannot
        return None, [Diagnostic("fmt-error", f"cannot format this file: {exc.__class__.__name__}: {exc}", file)]
    return out.getvalue(), []


def _round_trip_yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100_000  # never re-wrap long lines: a reviewer's line breaks are kept
    yaml.allow_duplicate_keys = False
    return yaml


def _canonicalize(node: Any, model: Any, in_sequence: bool = False) -> None:
    """Reorder the keys of ``node`` (a ruamel round-trip value) for ``model``, recursively."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from policykit.policy.schema_errors import field_names, model_at

    if isinstance(node, CommentedMap):
        node.fa.set_block_style()
        if model is not None:
            order = field_names(model)
            keys = list(node)
            wanted = [k for k in order if k in node] + [k for k in keys if k not in order]
            if wanted != keys:
                leading = _detach_leading_comments(node)
                for key in wanted:
                    node.move_to_end(key)
                if _END in leading:
                    _append_trailing_comment(node, leading.pop(_END))
                if in_sequence and wanted[0] in leading:
                    # Nothing may stand between "- " and an entry's first key:
                    # its comment lines go above the entry's second key.
                    leading[wanted[1]] = leading.pop(wanted[0]) + leading.get(wanted[1], "")
                for key, text in leading.items():
                    _set_leading_comment(node, key, text)
        for key, value in node.items():
            child = model_at(model, (key,)) if model is not None and isinstance(key, str) else None
            if child is None and model is not None and isinstance(value, CommentedSeq):
                child = model_at(model, (key, 0))
                _canonicalize_list(value, child)
            else:
                _canonicalize(value, child)
    elif isinstance(node, CommentedSeq):
        _canonicalize_list(node, None)


def _detach_leading_comments(node: Any) -> dict[Any, str]:
    """Take the comment lines above each key off where ruamel.yaml keeps
    them (the end of the value before the key, or the key's own "before"
    slot after a flow collection); returns them as text, by key."""
    keys = list(node)
    leading: dict[Any, str] = {}
    for previous, key in zip([None] + keys, keys + [_END]):
        text = ""
        slots, index = _last_comment_slot(node, previous) if previous is not None else (None, 0)
        token = slots[index] if slots is not None else None
        if token is not None and "\n" in token.value:
            end_of_line, rest = token.value.split("\n", 1)
            if rest:
                text = rest
                if end_of_line.strip():
                    token.value = end_of_line + "\n"
                else:
                    slots[index] = None
        own = node.ca.items.get(key) if key is not _END else None
        if own is not None and own[1]:
            for before in own[1]:
                column = getattr(before, "column", 0) or 0
                text += (" " * column if before.value.startswith("#") else "") + before.value
            own[1] = None
        if text:
            leading[key] = text
    return leading


def _append_trailing_comment(node: Any, text: str) -> None:
    """Put ``text`` (whole lines) after the last line of ``node``'s last value."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    container, key = node, list(node)[-1]
    while True:
        value = container[key]
        if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
            container, key = value, (list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
        else:
            break
    index = 2 if isinstance(container, CommentedMap) else 0
    slots = container.ca.items.setdefault(key, [None, None, None, None])
    if slots[index] is None:
        slots[index] = CommentToken("\n" + text, CommentMark(0))
    else:
        slots[index].value = slots[index].value.rstrip("\n") + "\n" + text


def _last_comment_slot(container: Any, key: Any) -> tuple[list | None, int]:
    """Where ruamel.yaml keeps the comment after ``container[key]``: in the
    last line of the value, which may be deep inside nested blocks."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    value = container[key]
    if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
        return _last_comment_slot(value, list(value)[-1] if isinstance(value, CommentedMap) else len(value) - 1)
    return container.ca.items.get(key), 2 if isinstance(container, CommentedMap) else 0


def _set_leading_comment(node: Any, key: Any, text: str) -> None:
    """Put ``text`` (whole lines: comments with their indentation, blank lines) above ``key``."""
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    slots = node.ca.items.setdefault(key, [None, None, None, None])
    slots[1] = (slots[1] or []) + [CommentToken(text, CommentMark(0))]


def _canonicalize_list(node: Any, item_model: Any) -> None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, CommentedSeq):
        _canonicalize(node, None)
        return
    if any(isinstance(item, (CommentedMap, CommentedSeq)) for item in node):
        node.fa.set_block_style()
    for item in node:
        _canonicalize(item, item_model, in_sequence=True)
