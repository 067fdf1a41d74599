"""The ``policykit`` command line.

This module only declares arguments; each command lives in
``policykit.commands.<name>`` and is imported when it runs, so that
``policykit --help``, ``validate``, ``fmt``, ``schema``, ``plan`` and ``diff``
start fast and never import torch.

Exit codes: 0 success / no change, 1 error or invalid input, 2 changes
(``plan`` and ``diff``, as in Terraform's ``-detailed-exitcode``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from policykit import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


def _add_format(p: argparse.ArgumentParser, choices: tuple[str, ...], default: str = "text") -> None:
    p.add_argument("--format", choices=choices, default=default,
                   help=f"output format (default: {default})")
    p.add_argument("--json", dest="format", action="store_const", const="json",
                   help="same as --format json (stable, with a format_version)")


def _add_loading_rule(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-key", metavar="KEY", help="public key the artifact must be signed with")
    p.add_argument("--allow-unsigned", action="store_true", help="load without checking the signature")
    p.add_argument("--allow-failed-audit", action="store_true", help="load an artifact that failed its audit")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command (cheap: no command is imported)."""
    parser = argparse.ArgumentParser(
        prog="policykit",
        description="Declarative concept erasure for text-to-image diffusion models.",
    )
    parser.add_argument("--version", action="version", version=f"policykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check policies; exit 0 if valid, 1 if not")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_format(p, ("text", "json", "github"))

    p = sub.add_parser("fmt", help="rewrite policies in canonical key order, keeping comments")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    p.add_argument("--diff", action="store_true", help="print what would change")

    p = sub.add_parser("schema", help="print the JSON Schema of the policy language")
    p.add_argument("--out", metavar="PATH", help="write it to PATH instead of standard output")

    p = sub.add_parser(
        "plan", help="compile a policy into the plan apply will run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile FILE (defaults, extends and method preset resolved) and show what apply will run.",
        epilog="exit codes (0 exactly when apply would do nothing):\n"
               "  0  nothing to do: <output.dir>/<name>/<version> (output.dir relative to the current\n"
               "     directory) holds an artifact with this plan's identity, signed as asked\n"
               "  1  error: the policy is invalid, its concept graph has conflicts, or apply would fail\n"
               "  2  apply would act: create the artifact, or refuse (another artifact is there:\n"
               "     bump metadata.version; or it is unsigned while a key is set: policykit sign)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", metavar="PATH", help="also write the plan as JSON to PATH")
    p.add_argument("--graph", metavar="PATH", help="write the concept graph (.json, .dot or .svg)")
    p.add_argument("--full", action="store_true", help="list every concept (default: the first 40 per table)")
    p.add_argument("--no-model", action="store_true",
                   help="skip the model check (preserves inside an erase radius); never imports torch")
    p.add_argument("--output", metavar="DIR", help="as apply's --output: the output directory to look in")
    p.add_argument("--sign-key", metavar="KEY", help="as apply's --sign-key: the key apply will be given")
    _add_format(p, ("text", "json", "github"))

    p = sub.add_parser(
        "diff", help="semantic diff of two policies; exit 0 same, 2 changed, 1 error",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare the compiled plans of OLD and NEW (or of FILE at GITREV and FILE now):\n"
                    "concepts, radii, preserves, audit, stages and base model; comments and\n"
                    "spelled-out defaults are not changes.",
        epilog="exit codes: 0 no semantic change, 2 changes, 1 error (either side invalid)")
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW", nargs="?")
    p.add_argument("--against", metavar="GITREV",
                   help="compare OLD (a file) with its version at this git revision")
    _add_format(p, ("text", "markdown", "json", "github"))

    p = sub.add_parser("apply", help="run the edit, audit it, publish a versioned signed artifact")
    p.add_argument("policy", metavar="POLICY", help="the policy file")
    p.add_argument("--plan", metavar="PLAN", help="a plan saved by `plan --out`: refused if its inputs changed")
    p.add_argument("--output", metavar="DIR", help="output directory (overrides the policy's output.dir)")
    p.add_argument("--sign-key", metavar="KEY", help="private key to sign with (overrides output.signing_key)")
    p.add_argument("--cache-dir", metavar="DIR", default=".policykit-cache",
                   help="stage cache: a rerun after a crash resumes from finished stages (default: .policykit-cache)")
    p.add_argument("--device", metavar="DEVICE", help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--classifier", metavar="SPEC", help="audit classifier: builtin:pixel-truth or a local CLIP dir")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: torch's; use 1 on a machine busy with other jobs)")
    _add_format(p, ("text", "json"))

    p = sub.add_parser("generate", help="generate images with an artifact's edited model")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("-n", type=int, default=4, help="number of images (default: 4)")
    p.add_argument("--out", metavar="DIR", default="generated", help="output directory (default: generated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--device", metavar="DEVICE")
    _add_loading_rule(p)

    p = sub.add_parser("audit", help="re-run an artifact's audit; reports go beside it (the artifact is not modified)")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--out", metavar="DIR", help="where to write the reports (default: ARTIFACT.audit)")
    p.add_argument("--classifier", metavar="SPEC", help="audit classifier: builtin:pixel-truth or a local CLIP dir")
    p.add_argument("--device", metavar="DEVICE")
    p.add_argument("--public-key", metavar="KEY", help="public key the artifact must be signed with")
    p.add_argument("--allow-unsigned", action="store_true", help="audit without checking the signature")
    _add_format(p, ("text", "json"))

    p = sub.add_parser("artifacts", help="list published artifacts")
    p.add_argument("action", choices=("list",))
    p.add_argument("--output", metavar="DIR", default="artifacts", help="output directory (default: artifacts)")
    p.add_argument("--verify", action="store_true", help="also check every file against its manifest")
    _add_format(p, ("text", "json"))

    p = sub.add_parser(
        "neighbors", help="show what an erase radius covers: nearby tokens, phrases inside it, mined samples",
        description="Decode CONCEPT's neighbor radius on a model: the vocabulary tokens and the given phrases "
                    "inside it, with relative distances, and what the mined neighbors decode to.")
    p.add_argument("concept", metavar="CONCEPT")
    p.add_argument("--model", metavar="M", required=True,
                   help="builtin:shapes, a local diffusers directory, or a hub id already in the local cache")
    p.add_argument("--radius", type=float, metavar="R", help="relative radius (default: the policy entry's, else 0.2)")
    p.add_argument("--space", choices=("token", "text"), help="where distances are measured (default: the entry's, else text, as a policy)")
    p.add_argument("--samples", type=int, metavar="N", help="neighbors to draw and decode (default: 16)")
    p.add_argument("--min-cosine", type=float, metavar="C", help="cosine floor of mined neighbors (default: 0.5)")
    p.add_argument("--template", metavar="T", help="prompt template with one {} (default: the entry's first, else {})")
    p.add_argument("--phrase", action="append", metavar="P", help="a phrase to measure (repeatable)")
    p.add_argument("--policy", metavar="FILE", help="measure the policy's synonyms, associated words, preserves, probes")
    p.add_argument("--limit", type=int, default=20, metavar="K", help="vocabulary tokens listed (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="mining seed (default: 0, the policy default)")
    _add_format(p, ("text", "json"))

    p = sub.add_parser("export", help="write an artifact as a full model for other tools")
    p.add_argument("artifact", metavar="ARTIFACT")
    p.add_argument("--format", choices=("diffusers", "single-file"), default="diffusers",
                   help="diffusers: a pipeline directory of the base model's class (default); single-file: one "
                        ".safetensors in the original Stable Diffusion (LDM) layout")
    p.add_argument("--out", metavar="PATH", required=True, help="where to write it (must not exist)")
    _add_loading_rule(p)

    p = sub.add_parser("keygen", help="write an ECDSA P-256 key pair for signing artifacts")
    p.add_argument("--out", metavar="DIR", default="keys", help="directory for the key files (default: keys)")
    p.add_argument("--name", default="policykit-signing", help="file name stem (default: policykit-signing)")
    _add_format(p, ("text", "json"))

    p = sub.add_parser(
        "sign", help="sign a published artifact (one apply published unsigned, or --force to re-sign)",
        description="Check ARTIFACT against its manifest, then sign exactly the checked bytes with KEY and "
                    "install ARTIFACT.sig atomically. Refused when the artifact fails verification, or is "
                    "already signed (unless --force).",
        epilog="exit codes: 0 signed, 1 refused or error (nothing changed)")
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact directory OUTPUT/NAME/VERSION")
    p.add_argument("--key", metavar="KEY", required=True, help="private key (PEM) to sign with, from `policykit keygen`")
    p.add_argument("--force", action="store_true", help="replace an existing signature")
    _add_format(p, ("text", "json"))

    p = sub.add_parser("verify", help="check an artifact's file hashes and, with a key, its signature")
    p.add_argument("artifact", metavar="ARTIFACT", help="artifact directory OUTPUT/NAME/VERSION")
    p.add_argument("--public-key", metavar="KEY", help="public key (PEM) that must have signed it")
    _add_format(p, ("text", "json"))

    return parser


#: Commands that may load a model (and so import transformers).
MODEL_COMMANDS = frozenset({"plan", "apply", "generate", "audit", "export", "neighbors"})


class _NotTorchvision(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def _drop_torchvision_notices() -> None:
    """transformers announces, whenever diffusers is imported, that torchvision is missing and
    it falls back to PIL image processors; policykit needs no torchvision. The filter sits on
    the one logger that says it (created here without importing transformers), so every other
    transformers warning still shows."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_NotTorchvision())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``policykit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_OK
    if args.command in MODEL_COMMANDS:
        _drop_torchvision_notices()
    module = importlib.import_module(f"policykit.commands.{args.command.replace('-', '_')}")
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print("policykit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
