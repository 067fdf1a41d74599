"""manifest.json: the sha256 of every file of an artifact, and what made it.

The manifest is what a reviewer reads and what ``verify`` checks without a
key. The signature (model-signing) covers the manifest too, so with a key
every byte is covered twice, by two independent implementations.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policykit.artifact.layout import MANIFEST
from policykit.hashing import canonical_json, file_sha256, sha256_hex

MANIFEST_FORMAT_VERSION = 1


def list_files(root: Path) -> list[str]:
    """Every regular file below ``root`` as a POSIX relative path, sorted.

    Symbolic links are refused: an artifact must not point outside itself.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            if full.is_symlink():
                raise ValueError(f"symbolic link in artifact: {full.relative_to(root).as_posix()}")
        for name in filenames:
            files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def hash_files(root: Path, *, exclude: frozenset[str] = frozenset({MANIFEST})) -> dict[str, dict]:
    """``{relative path: {"sha256": ..., "size": ...}}`` for every file below ``root``."""
    result = {}
    for rel in list_files(root):
        if rel in exclude:
            continue
        full = root / rel
        result[rel] = {"sha256": file_sha256(full), "size": full.stat().st_size}
    return result


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


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of an artifact directory (ValueError if absent or malformed)."""
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{root}: no {MANIFEST}: not an artifact") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path}: malformed manifest")
    if data.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported manifest format_version {data.get('format_version')!r}")
    return data


@dataclass(frozen=True)
class FileProblem:
    """A difference between an artifact's files and its manifest."""

    path: str
    problem: str  # "changed" | "missing" | "unexpected"

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_files(root: Path, manifest: dict[str, Any]) -> list[FileProblem]:
    """Every file that differs from the manifest: changed, missing or unexpected."""
    expected: dict[str, dict] = manifest["files"]
    try:
        actual = hash_files(root)
    except ValueError as exc:
        return [FileProblem(str(exc), "unexpected")]
    problems = [FileProblem(p, "missing") for p in sorted(expected.keys() - actual.keys())]
    problems += [FileProblem(p, "unexpected") for p in sorted(actual.keys() - expected.keys())]
    problems += [FileProblem(p, "changed") for p in sorted(expected.keys() & actual.keys())
                 if expected[p].get("sha256") != actual[p]["sha256"]]
    if not problems and manifest.get("content_id") != content_id(actual):
        problems.append(FileProblem(MANIFEST, "changed"))
    return problems
