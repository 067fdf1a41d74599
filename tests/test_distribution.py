"""How policykit is installed and what the repository keeps out of commits (issue 10, items 14, 15, 20)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# "policykit" on PyPI is an unrelated project (Open Policy Agent tools with a `policykit` command).
TAKEN_ON_PYPI = {"policykit"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_distribution_name_is_not_an_unrelated_pypi_project():
    name = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"]
    assert _normalise(name) not in TAKEN_ON_PYPI
    # the import package and the command keep their name
    assert "policykit" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert _normalise(name) in {_normalise(d) for d in packages_distributions().get("policykit", [])}, \
        "the installed import package `policykit` should come from this distribution (reinstall: pip install -e .)"


def _pip_installs(text: str) -> list[list[str]]:
    """The arguments of every `pip install` in a document (shell lines, options dropped)."""
    found = []
    for match in re.finditer(r"pip install ([^\n&|;`#]+)", text):
        found.append([a for a in match.group(1).split() if not a.startswith("-")])
    return found


def test_docs_never_install_policykit_by_name_from_the_index():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for arguments in _pip_installs(doc.read_text()):
            for arg in arguments:
                bare = re.split(r"[\[<>=!~ ]", arg.strip("'\""), maxsplit=1)[0]
                assert _normalise(bare) not in TAKEN_ON_PYPI, f"{doc.name}: `pip install {' '.join(arguments)}`"


def test_the_ci_guide_installs_from_a_checkout_at_a_pinned_commit():
    text = (REPO / "docs" / "ci.md").read_text()
    assert any(arg.startswith("./") for args in _pip_installs(text) for arg in args)
    assert re.search(r"ref: [0-9a-f]{40}", text), "the policykit checkout should be pinned to a full commit sha"


def test_readme_says_plain_torch_is_the_cuda_build_and_how_to_get_the_cpu_wheel():
    text = (REPO / "README.md").read_text()
    assert re.search(r"plain\s+`pip install torch`.*?CUDA", text, re.S)
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "torch==2.13.0" in (REPO / ".ci" / "run").read_text()


def test_keys_and_generated_images_are_ignored_by_git():
    paths = ["keys/policykit-signing.pem", "keys/policykit-signing.pub", "generated/a-0-0.png",
             "policies/keys/team-signing.pem"]
    if (REPO / ".git").exists():
        out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
        assert sorted(out.stdout.split()) == sorted(paths), out.stdout + out.stderr
    else:  # a source tarball: read the patterns instead
        lines = (REPO / ".gitignore").read_text().split()
        assert "keys/" in lines and "generated/" in lines
