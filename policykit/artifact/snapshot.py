"""Reading an artifact once: every file's bytes, from regular files only.

Two rules every reader of an artifact follows, in one place:

- Only regular files and directories belong in an artifact. Anything else is
  refused on sight, from ``lstat``, without opening it: a FIFO would block
  the reader forever, a device could have side effects, a symbolic link
  could point outside the artifact.
- What is checked is what is used. :func:`read_tree` reads each file once
  into memory; verification hashes those bytes and loading deserializes the
  same bytes, so a file swapped on disk between the two steps changes
  nothing (docs/artifact.md, "The loading rule").
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"))
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class SpecialFile(ValueError):
    """A path inside an artifact is neither a regular file nor a directory."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO (named pipe)", ...); "a regular file" for one."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def read_regular_file(path: str | Path, *, label: str | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a link, FIFO, socket or device).

    The type is checked with ``lstat`` before anything is opened, and again on
    the open descriptor (``O_NOFOLLOW | O_NONBLOCK``, so even a file swapped for
    a FIFO in between cannot block), so a non-regular file is never read.
    ``label`` names the file in messages (default: the path).
    """
    path = Path(path)
    label = label or str(path)
    info = os.lstat(path)  # FileNotFoundError is the caller's to report
    if not stat.S_ISREG(info.st_mode):
        raise SpecialFile(f"{label} is {file_kind(info.st_mode)}, not a regular file: refused")
    fd = os.open(path, _READ_FLAGS)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise SpecialFile(f"{label} was replaced while being opened: refused")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_tree(root: str | Path) -> list[str]:
    """Every regular file below ``root`` as a sorted POSIX relative path.

    Raises :class:`SpecialFile` for anything that is not a regular file or a
    directory (symbolic links included), judged from ``lstat`` alone.
    """
    root = Path(root)
    files: list[str] = []
    pending = [root]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                mode = entry.stat(follow_symlinks=False).st_mode
                rel = Path(entry.path).relative_to(root).as_posix()
                if stat.S_ISDIR(mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(mode):
                    files.append(rel)
                else:
                    raise SpecialFile(f"{rel} is {file_kind(mode)}: an artifact holds only regular files and "
                                      "directories")
    return sorted(files)


def read_tree(root: str | Path) -> dict[str, bytes]:
    """``{relative POSIX path: bytes}`` for every file below ``root``, each read exactly once.

    Raises :class:`SpecialFile` (a ValueError) before reading anything when
    the tree holds a link, FIFO, socket or device.
    """
    root = Path(root)
    return {rel: read_regular_file(root / rel, label=rel) for rel in list_tree(root)}


def member_path(name: object, *, what: str) -> str:
    """``name`` as a normalized relative POSIX path that stays inside its folder, or ValueError.

    Absolute paths, ``..`` and ``.`` components, empty components,
    backslashes and NUL bytes are refused: a path an artifact names must
    mean one file inside it on every platform.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty relative path, not {name!r}")
    if "\0" in name or "\\" in name:
        raise ValueError(f"{what} {name!r} contains a NUL byte or a backslash")
    path = PurePosixPath(name)
    parts = name.split("/")
    if path.is_absolute() or (len(parts[0]) >= 2 and parts[0][1] == ":"):
        raise ValueError(f"{what} {name!r} is absolute: it must be a path inside the artifact")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"{what} {name!r} leaves or re-enters its folder ('..', '.' or an empty part): "
                         "it must be a plain path inside the artifact")
    return path.as_posix()
