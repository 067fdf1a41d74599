"""benchmarks/emblems_train_time.py: it runs the recipe's own stages and projects a total from them."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--steps", "1", "--warmup", "1", "--clip-batch", "8", "--vae-batch", "2", "--unet-batch", "2",
        "--latent-images", "4", "--unet-widths", "32,64", "--unet-heads", "4", "--unet-steps", "100",
        "--unet-polish-steps", "50"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports its sibling report.py, as when run as a script
    monkeypatch.setattr(sys, "argv", ["benchmarks/emblems_train_time.py"])
    spec = importlib.util.spec_from_file_location("bench_train_time", BENCHMARKS / "emblems_train_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_projects_every_stage_sums_them_and_writes_one_section_per_recipe(bench, capsys, monkeypatch):
    import report

    written = {}
    monkeypatch.setattr(report, "write_section", lambda name, markdown: written.setdefault(name, markdown))
    assert bench.main(TINY + ["--write"]) == 0
    out = capsys.readouterr().out
    minutes = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+)\s.*?\s([\d.]+)$", out, re.M)
               if m.group(1) in {"CLIP", "VAE", "latents", "U-Net", "polish", "total"}}
    assert set(minutes) == {"CLIP", "VAE", "latents", "U-Net", "polish", "total"}
    assert abs(minutes.pop("total") - sum(minutes.values())) <= 0.3  # each row is rounded to 0.1
    assert minutes["polish"] * 2 == pytest.approx(minutes["U-Net"], abs=0.15)  # same rate, half the steps
    assert "--unet-heads 4" in out and "torch " in out and "transformers " in out and "code at commit " in out
    [(name, markdown)] = written.items()
    assert name.startswith("emblems-train-time-") and "unet-heads-4" in name and "unet-steps-100" in name
    assert "| stage | time | steps or images | minutes |" in markdown and "| total |" in markdown
    assert "python benchmarks/emblems_train_time.py" in markdown  # the command that wrote it


def test_the_machine_line_names_the_cpu_and_the_libraries():
    from policykit.emblems.train import machine

    line = machine()
    assert "torch " in line and "transformers " in line and "diffusers " in line and "numpy " in line
