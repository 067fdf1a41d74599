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
A comment on a line of its own stays attached to the value before it
(ruamel.yaml's model of comments), so it moves with that value when keys are
reordered; files already in canonical order keep every comment in place.
"""

from __future__ import annotations

import io
from typing import Any

from policykit.diagnostics import Diagnostic
from policykit.policy.yaml_tree import parse_yaml

# Problems of values, not of YAML: formatting such a file is still safe.
_VALUE_PROBLEMS = {"not-finite", "number-too-large"}


def format_policy(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """The canonical text of a policy file, or None and the diagnostics why not.

    The input is first read by :func:`~policykit.policy.yaml_tree.parse_yaml`,
    so hostile YAML (aliases, tags, duplicate keys, deep nesting, binary) is
    refused before ruamel.yaml's round-trip loader ever sees it.
    """
    parsed = parse_yaml(data, file)
    errors = [d for d in parsed.diagnostics if d.severity == "error" and d.code not in _VALUE_PROBLEMS]
    if errors or parsed.root is None or parsed.text is None:
        return None, errors or parsed.diagnostics
    if not isinstance(parsed.root.value, dict):
        return None, [Diagnostic("not-a-mapping", "a policy is a mapping of keys, not a list or a single value",
                                 file, parsed.root.mark.line, parsed.root.mark.col)]
    yaml = _round_trip_yaml()
    document = yaml.load(parsed.text)
    from policykit.policy.schema import Policy

    _canonicalize(document, Policy)
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue(), []


def _round_trip_yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt", pure=True)
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100_000  # never re-wrap long lines: a reviewer's line breaks are kept
    yaml.allow_duplicate_keys = False
    return yaml


def _canonicalize(node: Any, model: Any) -> None:
    """Reorder the keys of ``node`` (a ruamel round-trip value) for ``model``, recursively."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from policykit.policy.schema_errors import field_names, model_at

    if isinstance(node, CommentedMap):
        node.fa.set_block_style()
        if model is not None:
            order = field_names(model)
            for key in [k for k in order if k in node] + [k for k in list(node) if k not in order]:
                node.move_to_end(key)
        for key, value in node.items():
            child = model_at(model, (key,)) if model is not None and isinstance(key, str) else None
            if child is None and model is not None and isinstance(value, CommentedSeq):
                child = model_at(model, (key, 0))
                _canonicalize_list(value, child)
            else:
                _canonicalize(value, child)
    elif isinstance(node, CommentedSeq):
        _canonicalize_list(node, None)


def _canonicalize_list(node: Any, item_model: Any) -> None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, CommentedSeq):
        _canonicalize(node, None)
        return
    if any(isinstance(item, (CommentedMap, CommentedSeq)) for item in node):
        node.fa.set_block_style()
    for item in node:
        _canonicalize(item, item_model)
