"""Hostile or broken policy files: each gets a clear diagnostic, fast.

Policies come from pull requests, so nothing in a file may run code, hang,
exhaust memory or end in a traceback. Each case runs in-process with a
wall-clock bound; the nastiest also run through the CLI under ``timeout``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policykit.policy.loader import load_policy
from policykit.policy.yaml_tree import MAX_DEPTH, MAX_DIAGNOSTICS, MAX_FILE_BYTES, MAX_NODES

REPO = Path(__file__).resolve().parents[1]
MINIMAL = (REPO / "tests" / "fixtures" / "policies" / "good-minimal.yaml").read_bytes()
# Generous for a shared 2-core CI runner; each case takes well under 0.5 s alone.
SECONDS = 3.0

BILLION_LAUGHS = b"""\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def _load(tmp_path: Path, data: bytes, name: str = "hostile.yaml"):
    path = tmp_path / name
    path.write_bytes(data)
    start = time.perf_counter()
    loaded = load_policy(path)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"took {elapsed:.2f} s"
    assert not loaded.ok
    assert loaded.diagnostics, "a rejected file must say why"
    return loaded


def _first(loaded) -> tuple[str, int, int]:
    d = loaded.diagnostics[0]
    return d.code, d.line, d.col


def _with_value(key_line: bytes) -> bytes:
    """The minimal policy with one extra line in its erase entry."""
    return MINIMAL + key_line + b"\n"


def test_billion_laughs_is_refused_at_the_first_anchor(tmp_path):
    loaded = _load(tmp_path, BILLION_LAUGHS)
    assert ("yaml-anchor", 1, 4) in [(d.code, d.line, d.col) for d in loaded.diagnostics]
    assert {"yaml-anchor", "yaml-alias"} <= {d.code for d in loaded.diagnostics}
    assert len(loaded.diagnostics) <= MAX_DIAGNOSTICS + 1


@pytest.mark.parametrize("opener", [b"[", b"{", b"- "], ids=["brackets", "braces", "dashes"])
def test_deep_flow_nesting_stops_at_the_depth_limit(tmp_path, opener):
    loaded = _load(tmp_path, opener * 100_000)
    assert "too-deep" in {d.code for d in loaded.diagnostics}
    deep = next(d for d in loaded.diagnostics if d.code == "too-deep")
    assert deep.line == 1 and deep.col > MAX_DEPTH // 2


def test_deep_block_nesting_stops_at_the_depth_limit(tmp_path):
    text = b"".join(b"  " * i + b"k:\n" for i in range(200))
    loaded = _load(tmp_path, text)
    assert _first(loaded) == ("too-deep", MAX_DEPTH + 1, 2 * MAX_DEPTH + 1)


def test_file_over_the_size_cap_is_refused_without_parsing(tmp_path):
    loaded = _load(tmp_path, b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    assert _first(loaded) == ("file-too-large", 0, 0)


def test_size_cap_applies_to_a_custom_reader_too():
    loaded = load_policy("x.yaml", read_file=lambda p: b"a: 1\n" * MAX_FILE_BYTES)
    assert _first(loaded) == ("file-too-large", 0, 0)


def test_non_utf8_points_at_the_first_bad_byte(tmp_path):
    loaded = _load(tmp_path, b"kind: ErasurePolicy\nmetadata:\n  name: caf\xe9\n")
    assert _first(loaded) == ("not-utf8", 3, 12)
    assert "0xe9" in loaded.diagnostics[0].message


def test_binary_file_is_refused(tmp_path):
    loaded = _load(tmp_path, bytes(range(256)) * 64)
    assert _first(loaded)[0] in {"not-utf8", "invalid-character"}


def test_nul_byte_points_at_its_position(tmp_path):
    loaded = _load(tmp_path, b"apiVersion: policykit/v1alpha1\nkind: Erasure\x00Policy\n")
    assert _first(loaded) == ("invalid-character", 2, 14)


def test_yaml_tags_never_construct_anything(tmp_path):
    marker = tmp_path / "pwned"
    text = _with_value(b'    anchor: !!python/object/apply:os.system ["touch ' + str(marker).encode() + b'"]')
    loaded = _load(tmp_path, text)
    assert ("yaml-tag", 10, 13) == _first(loaded)
    assert not marker.exists()


def test_custom_tags_are_refused(tmp_path):
    loaded = _load(tmp_path, _with_value(b"    anchor: !include secrets.yaml"))
    assert _first(loaded) == ("yaml-tag", 10, 13)


def test_multiple_documents_are_refused_at_the_second(tmp_path):
    loaded = _load(tmp_path, MINIMAL + b"---\nkind: Other\n")
    assert _first(loaded) == ("multiple-documents", 10, 1)


@pytest.mark.parametrize("text", [b"- a\n- b\n", b"just a string\n", b"42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    loaded = _load(tmp_path, text)
    assert _first(loaded) == ("not-a-mapping", 1, 1)


@pytest.mark.parametrize("text", [b"", b"\n\n", b"# only a comment\n", b"---\n"])
def test_empty_file(tmp_path, text):
    loaded = _load(tmp_path, text)
    assert _first(loaded)[0] in {"empty-file", "not-a-mapping"}


@pytest.mark.parametrize("value", [b"1e999", b"-1e999", b".inf", b"-.Inf", b".nan", b".NaN"])
def test_non_finite_floats_are_refused_once(tmp_path, value):
    loaded = _load(tmp_path, _with_value(b"    strength: " + value))
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("not-finite", 10, 15)]


def test_huge_integers_are_refused(tmp_path):
    text = MINIMAL + b"training:\n  seed: " + b"9" * 100_000 + b"\n"
    loaded = _load(tmp_path, text)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("number-too-large", 11, 9)]


def test_integer_above_the_bound_is_out_of_range(tmp_path):
    loaded = _load(tmp_path, MINIMAL + b"training:\n  seed: 99999999999999999999\n")
    assert _first(loaded) == ("out-of-range", 11, 9)


def test_thousands_of_duplicate_keys_give_a_bounded_report(tmp_path):
    text = MINIMAL + b"".join(b"apiVersion: x\n" for _ in range(20_000))
    loaded = _load(tmp_path, text)
    assert loaded.diagnostics[0].code == "duplicate-key"
    assert len(loaded.diagnostics) <= MAX_DIAGNOSTICS + 1
    assert loaded.diagnostics[-1].code == "too-many-problems"


def test_complex_keys_are_refused(tmp_path):
    loaded = _load(tmp_path, MINIMAL + b"? [a, b]\n: 1\n")
    assert _first(loaded) == ("complex-key", 10, 3)


def test_syntax_error_points_at_the_problem(tmp_path):
    loaded = _load(tmp_path, b"kind: [ErasurePolicy\nmetadata: {}\n")
    assert _first(loaded)[0] == "yaml-syntax"
    assert _first(loaded)[1] == 2


def test_a_list_over_the_schema_bound_is_out_of_range(tmp_path):
    text = MINIMAL + b"preserve:\n" + b"  - x\n" * 10_001
    loaded = _load(tmp_path, text)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("out-of-range", 11, 3)]
    assert "at most 10000 entries" in loaded.diagnostics[0].message


@pytest.mark.parametrize("body, position", [
    # mapping, key "a", sequence, then items "1," (2 characters each) from column 5
    (b"a: [" + b"1," * 400_000 + b"1]\n", (1, 5 + 2 * (MAX_NODES - 3))),
    # the sequence, then one item per line
    (b"- x\n" * 200_000, (MAX_NODES, 3)),
], ids=["flow", "block"])
def test_a_file_with_too_many_values_stops_at_the_first_value_over_the_cap(tmp_path, body, position):
    loaded = _load(tmp_path, body)
    [diagnostic] = loaded.diagnostics
    assert diagnostic.code == "too-many-values" and f"more than {MAX_NODES} " in diagnostic.message
    # the (MAX_NODES + 1)-th value, exactly: nothing past the cap is read
    assert (diagnostic.line, diagnostic.col) == position


# Reads two files at the value cap's boundary and prints each verdict, in a
# fresh interpreter; with "pure", ruamel.yaml.clib is hidden first, as on a
# machine without it (PyPy, a missing wheel).
_BOUNDARY_PROBE = """
import json, sys
if sys.argv[1] == "pure":
    sys.modules["_ruamel_yaml"] = None  # makes "import _ruamel_yaml" fail
from policykit.policy import yaml_tree
verdicts = {}
for name in sys.argv[2:]:
    parsed = yaml_tree.parse_yaml(open(name, "rb").read(), name)
    verdicts[name] = [d.code for d in parsed.diagnostics]
print(json.dumps({"c_parser": yaml_tree._HAVE_C_PARSER, "cap": yaml_tree.MAX_NODES, "verdicts": verdicts}))
"""


@pytest.mark.slow  # about 6 s: the pure-Python parser reads 100,000 values
def test_the_value_cap_is_the_same_with_and_without_the_c_parser(tmp_path):
    """A policy valid on a laptop with libyaml is valid in CI without it, and the
    reverse: both parsers give the same verdict on both sides of the cap."""
    at_cap, over_cap = tmp_path / "at-cap.yaml", tmp_path / "over-cap.yaml"
    at_cap.write_bytes(b"- x\n" * (MAX_NODES - 1))  # the sequence and MAX_NODES - 1 items
    over_cap.write_bytes(b"- x\n" * MAX_NODES)
    results = {}
    for parser in ("c", "pure"):
        out = subprocess.run([sys.executable, "-c", _BOUNDARY_PROBE, parser, str(at_cap), str(over_cap)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        results[parser] = json.loads(out.stdout)
    # the test really ran both parsers (ruamel.yaml.clib is a dependency on CPython)
    assert results["c"]["c_parser"] is True and results["pure"]["c_parser"] is False
    for parser in ("c", "pure"):
        assert results[parser]["cap"] == MAX_NODES
        assert results[parser]["verdicts"] == {str(at_cap): [], str(over_cap): ["too-many-values"]}, parser


@pytest.mark.parametrize("payload", [BILLION_LAUGHS, b"[" * 1_000_000, b"{a: " * 200_000],
                         ids=["billion-laughs", "brackets", "nested-flow-maps"])
def test_cli_rejects_nasty_input_within_a_timeout(tmp_path, payload):
    path = tmp_path / "nasty.yaml"
    path.write_bytes(payload[:MAX_FILE_BYTES])
    out = subprocess.run(["timeout", "20", sys.executable, "-m", "policykit", "validate", "--json", str(path)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert '"valid": false' in out.stdout


@pytest.mark.parametrize("escape", [b"\\0", b"\\x07", b"\\ud800", b"\\e"], ids=["nul", "bell", "surrogate", "escape"])
def test_escaped_control_characters_in_strings_are_refused(tmp_path, escape):
    loaded = _load(tmp_path, _with_value(b'    anchor: "a' + escape + b'b"'))
    codes = [(d.code, d.line) for d in loaded.diagnostics]
    if escape == b"\\ud800" and codes == [("yaml-syntax", 10)]:
        return  # libyaml (ruamel's C parser) refuses a lone surrogate itself
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("invalid-character", 10, 13)]


def test_merge_keys_get_a_specific_message(tmp_path):
    loaded = _load(tmp_path, MINIMAL + b"<<: {kind: ErasurePolicy}\n")
    [diagnostic] = loaded.diagnostics
    assert (diagnostic.code, diagnostic.line, diagnostic.col) == ("unknown-key", 10, 1)
    assert "merge keys are not supported" in diagnostic.message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("named_by", ["extends", "command line"])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path, named_by):
    # Opening a FIFO for reading blocks until a writer appears, which in CI is never.
    fifo = tmp_path / "base.yaml"
    os.mkfifo(fifo)
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(b"extends: [base.yaml]\n" + MINIMAL)
    target = policy if named_by == "extends" else fifo
    try:
        out = subprocess.run([sys.executable, "-m", "policykit", "validate", "--json", str(target)],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate hung on a FIFO named by {named_by}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    [diagnostic] = json.loads(out.stdout)["files"][0]["diagnostics"]
    assert diagnostic["code"] == "not-a-file" and "FIFO" in diagnostic["message"]
    if named_by == "extends":  # at the extends entry that names it
        assert (Path(diagnostic["file"]).name, diagnostic["line"], diagnostic["col"]) == ("policy.yaml", 1, 11)


def test_a_directory_named_by_extends_is_refused(tmp_path):
    (tmp_path / "base.yaml").mkdir()
    loaded = _load(tmp_path, b"extends: [base.yaml]\n" + MINIMAL)
    assert [(d.code, d.line, d.col) for d in loaded.diagnostics] == [("not-a-file", 1, 11)]
    assert "a directory" in loaded.diagnostics[0].message
