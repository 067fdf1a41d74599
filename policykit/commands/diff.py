"""``policykit diff OLD NEW`` and ``policykit diff FILE --against GITREV``.

Both sides are loaded, checked and compiled; the diff compares the compiled
plans, so changes arriving through ``defaults`` or ``extends`` show on the
concepts they affect. With ``--against``, the old side is FILE (and every
file it extends) as of a git revision, read with ``git show REV:path``.

Exit codes: 0 no semantic change, 2 changes, 1 error (either side invalid,
or the git revision or file cannot be read).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from policykit.commands.plan import print_diagnostics
from policykit.diagnostics import Diagnostic, diagnostics_json, has_errors

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


class GitReadError(Exception):
    """A file cannot be read at a git revision; carries the Diagnostic to show."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def git_file_reader(rev: str, file: str | Path) -> Callable[[Path], bytes]:
    """A ``read_file`` for :func:`load_policy` that reads files as of ``rev``
    in the git repository containing ``file``.

    Raises :class:`GitReadError` up front when ``file`` is not in a git
    repository, ``rev`` is not a commit, or ``file`` does not exist at ``rev``.
    """
    file = Path(file)
    directory = Path(os.path.abspath(file)).parent
    if not directory.is_dir():
        raise GitReadError(Diagnostic("git-error", f"directory {directory} does not exist", str(file)))
    top = _git(["rev-parse", "--show-toplevel"], directory)
    if top is None:
        raise GitReadError(Diagnostic("git-error", "not inside a git repository: --against needs one", str(file)))
    top_dir = Path(top.decode().strip())
    if _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], directory) is None:
        raise GitReadError(Diagnostic("git-error", f"{rev!r} is not a commit in {top_dir}", str(file)))

    def repo_path(path: Path) -> str:
        # git paths are relative to the top level; resolve symlinks on both
        # sides so /tmp -> /private/tmp style aliases still match.
        relative = os.path.relpath(os.path.realpath(path), os.path.realpath(top_dir))
        if relative.startswith(".."):
            raise FileNotFoundError(f"{path} is outside the git repository {top_dir}")
        return Path(relative).as_posix()

    def read(path: Path) -> bytes:
        data = _git(["show", f"{rev}:{repo_path(Path(path))}"], directory)
        if data is None:
            raise FileNotFoundError(f"{repo_path(Path(path))} does not exist at {rev}")
        return data

    try:
        read(file)
    except FileNotFoundError as exc:
        raise GitReadError(Diagnostic("git-error", str(exc), str(file))) from None
    return read


def _git(args: list[str], cwd: Path) -> bytes | None:
    """Output of ``git ARGS`` run in ``cwd``, or None when it fails."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _compile_side(file: str, label: str, read_file=None):
    """Load, check and compile one side; returns ``(plan, diagnostics, texts)``
    (plan None on error; texts: the sources, for snippets)."""
    from policykit.graph import build_graph
    from policykit.plan import compile_plan
    from policykit.policy.loader import load_policy

    loaded = load_policy(file, read_file=read_file)
    texts = getattr(loaded, "texts", None) or {}
    diagnostics = list(loaded.diagnostics)
    if not loaded.ok:
        return None, diagnostics, texts
    diagnostics += build_graph(loaded).diagnostics
    if has_errors(diagnostics):
        return None, diagnostics, texts
    try:
        return compile_plan(loaded, read_file=read_file), diagnostics, texts
    except OSError as exc:
        return None, diagnostics + [Diagnostic("read-error", f"{label}: {exc}", file)], texts


def run(args) -> int:
    """Run ``policykit diff``; returns the exit code."""
    from policykit.policy_diff import diff_plans, render_github, render_json, render_markdown, render_text

    fmt = args.format
    old_reader = None
    if args.against:
        if args.new:
            return _fail([Diagnostic("usage", "give either NEW or --against GITREV, not both", args.new)], fmt)
        new_file = old_file = args.old
        try:
            old_reader = git_file_reader(args.against, args.old)
        except GitReadError as exc:
            return _fail([exc.diagnostic], fmt)
    elif args.new:
        old_file, new_file = args.old, args.new
    else:
        return _fail([Diagnostic("usage", "diff needs OLD and NEW files, or FILE --against GITREV", args.old)], fmt)

    old_label = f"{old_file}@{args.against}" if args.against else old_file
    old_plan, old_diags, old_texts = _compile_side(old_file, old_label, old_reader)
    new_plan, new_diags, new_texts = _compile_side(new_file, new_file)
    if old_plan is None or new_plan is None:
        if args.against:
            # the same path names both sides: say which revision the problems are in
            old_diags = [Diagnostic(d.code, f"(at {args.against}) {d.message}", d.file, d.line, d.col, d.severity)
                         for d in old_diags]
        failed = [(diags, texts) for diags, texts, plan in ((old_diags, old_texts, old_plan),
                                                             (new_diags, new_texts, new_plan)) if plan is None]
        if fmt == "json":
            return _fail([d for diags, _ in failed for d in diags], fmt)
        for diags, texts in failed:  # each side's snippets come from its own text
            _fail(diags, fmt, texts)
        return EXIT_ERROR

    diff = diff_plans(old_plan, new_plan)
    if fmt == "json":
        sys.stdout.write(render_json(diff))
    elif fmt == "markdown":
        sys.stdout.write(render_markdown(diff))
    elif fmt == "github":
        sys.stdout.write(render_github(diff, new_file))
    else:
        from rich.console import Console

        render_text(diff, Console(highlight=False))
    return EXIT_CHANGES if diff.changed else EXIT_OK


def _fail(diagnostics: list[Diagnostic], fmt: str, texts: dict[str, str] | None = None) -> int:
    if fmt == "json":
        print(diagnostics_json(diagnostics, status="error"))
    else:
        print_diagnostics(diagnostics, "github" if fmt == "github" else "text", texts)
    return EXIT_ERROR
