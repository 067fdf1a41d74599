"""manifest.json: the sha256 of every file of an artifact, and what made it.

The manifest is what a reviewer reads and what ``verify`` checks without a
key. Without a key it proves integrity only: whoever can rewrite a file can
rewrite the manifest too. The signature (model-signing) covers the manifest
as well, so with a key every byte is covered twice, by two independent
implementations, and the manifest's statements (name, version, status,
hashes) are authentic.

Files are read with :mod:`policykit.artifact.snapshot`: regular files only,
each read once, so the bytes hashed are the bytes a loader later uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from policykit.artifact.layout import MANIFEST
from policykit.artifact.snapshot import list_tree, read_regular_file, read_tree
from policykit.hashing import canonical_json, sha256_hex

MANIFEST_FORMAT_VERSION = 1

# The type of every manifest field a reader looks inside: a wrongly typed field is a clear error when the
# manifest is read, not an AttributeError wherever it is first used.
_FIELD_TYPES: dict[tuple[str, ...], tuple[type, ...]] = {
    ("kind",): (str,), ("status",): (str,), ("content_id",): (str,), ("inputs_id",): (str,),
    ("signer",): (str, type(None)),
    ("policy",): (dict,), ("policy", "name"): (str,), ("policy", "version"): (str,),
    ("policy", "sha256"): (str,), ("policy", "file_sha256"): (str,), ("policy", "sources"): (list,),
    ("plan",): (dict,), ("plan", "hash"): (str,), ("plan", "file_sha256"): (str,), ("plan", "method"): (str,),
    ("base_model",): (dict,), ("base_model", "id"): (str,), ("base_model", "sha256"): (str,),
    ("base_model", "revision"): (str, type(None)), ("base_model", "source"): (str, type(None)),
}
_TYPE_WORDS = {str: "a string", dict: "an object", list: "a list", type(None): "null", int: "an integer"}


def list_files(root: Path) -> list[str]:
    """Every regular file below ``root`` as a POSIX relative path, sorted.

    Symbolic links, FIFOs, sockets and devices are refused (ValueError): an
    artifact must not point outside itself, nor hold a file that blocks or
    has side effects when read.
    """
    return list_tree(root)


def hash_entry(data: bytes) -> dict[str, Any]:
    """The manifest entry of one file's bytes: ``{"sha256": ..., "size": ...}``."""
    return {"sha256": sha256_hex(data), "size": len(data)}


def hash_snapshot(files: Mapping[str, bytes], *, exclude: frozenset[str] = frozenset({MANIFEST})) -> dict[str, dict]:
    """Manifest entries for files already read into memory (see :func:`~policykit.artifact.snapshot.read_tree`)."""
    return {rel: hash_entry(data) for rel, data in sorted(files.items()) if rel not in exclude}


def hash_files(root: Path, *, exclude: frozenset[str] = frozenset({MANIFEST})) -> dict[str, dict]:
    """``{relative path: {"sha256": ..., "size": ...}}`` for every file below ``root``."""
    return {rel: hash_entry(read_regular_file(root / rel, label=rel)) for rel in list_files(root)
            if rel not in exclude}


def content_id(files: dict[str, dict]) -> str:
    """One id for a set of files: sha256 over their sorted paths and hashes."""
    return sha256_hex(canonical_json({k: v["sha256"] for k, v in files.items()}).encode())


def write_manifest(root: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Hash every file below ``root`` and write ``root/manifest.json``.

    ``fields`` (provenance, settings, metrics...) are stored beside the file
    list. Returns the manifest as written.
    """
    files = hash_files(root)
    manifest = {"format_version": MANIFEST_FORMAT_VERSION, **fields,
                "content_id": content_id(files), "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def parse_manifest(data: bytes, where: str | Path) -> dict[str, Any]:
    """A manifest from its bytes; ValueError naming ``where`` when it is malformed.

    Malformed covers invalid JSON, nesting too deep to parse, and any field a
    reader relies on having the wrong type.
    """
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ValueError(f"{where}: unreadable manifest: nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: unreadable manifest: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: malformed manifest: not a JSON object")
    if doc.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ValueError(f"{where}: unsupported manifest format_version {_short(doc.get('format_version'))}")
    files = doc.get("files")
    if not isinstance(files, dict):
        raise ValueError(f"{where}: malformed manifest: 'files' must be an object")
    for rel, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)):
            raise ValueError(f"{where}: malformed manifest: files[{_short(rel)}] must be an object with a "
                             "'sha256' string")
    for path, types in _FIELD_TYPES.items():
        value, present = doc, True
        for key in path:
            if not isinstance(value, dict) or key not in value:
                present = False
                break
            value = value[key]
        if present and not isinstance(value, types):
            words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)
            raise ValueError(f"{where}: malformed manifest: '{'.'.join(path)}' must be {words}, "
                             f"not {_short(value)}")
    return doc


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of an artifact directory (ValueError if absent, not a regular file, or malformed)."""
    path = Path(root) / MANIFEST
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        raise ValueError(f"{root}: no {MANIFEST}: not an artifact") from None
    except OSError as exc:
        raise ValueError(f"{path}: unreadable manifest: {exc}") from None
    return parse_manifest(data, path)


@dataclass(frozen=True)
class FileProblem:
    """A difference between an artifact's files and its manifest."""

    path: str
    problem: str  # "changed" | "missing" | "unexpected" | "refused: ..."

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_snapshot(files: Mapping[str, bytes], manifest: dict[str, Any]) -> list[FileProblem]:
    """Every file of a snapshot that differs from the manifest: changed, missing or unexpected."""
    expected: dict[str, dict] = manifest["files"]
    actual = hash_snapshot(files)
    problems = [FileProblem(p, "missing") for p in sorted(expected.keys() - actual.keys())]
    problems += [FileProblem(p, "unexpected") for p in sorted(actual.keys() - expected.keys())]
    problems += [FileProblem(p, "changed") for p in sorted(expected.keys() & actual.keys())
                 if expected[p].get("sha256") != actual[p]["sha256"]]
    if not problems and manifest.get("content_id") != content_id(actual):
        problems.append(FileProblem(MANIFEST, "changed"))
    return problems


def check_files(root: Path, manifest: dict[str, Any]) -> list[FileProblem]:
    """Every file below ``root`` that differs from the manifest (a special file is one problem, unread)."""
    try:
        files = read_tree(root)
    except (ValueError, OSError) as exc:
        return [FileProblem(str(root), f"refused: {exc}")]
    return check_snapshot(files, manifest)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
