"""benchmarks/emblems_train_time.py: it runs the recipe's own stages and projects a total from them."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train_time", BENCHMARKS / "emblems_train_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_projects_every_stage_and_sums_them(capsys, monkeypatch):
    bench = _load()
    monkeypatch.setattr(sys, "argv", ["x"])
    assert bench.main(["--steps", "1", "--warmup", "1", "--clip-batch", "8", "--vae-batch", "2", "--unet-batch", "2",
                       "--latent-images", "4", "--unet-widths", "32,64", "--unet-heads", "2", "--unet-steps", "100",
                       "--unet-polish-steps", "50"]) == 0
    out = capsys.readouterr().out
    minutes = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(\S+)\s.*=\s+([\d.]+) min", out, re.M)}
    assert set(minutes) == {"CLIP", "VAE", "latents", "U-Net", "polish"}
    total = float(re.search(r"total\s+([\d.]+) min", out).group(1))
    assert abs(total - sum(minutes.values())) <= 0.3  # each row is rounded to 0.1
    assert minutes["polish"] * 2 == pytest.approx(minutes["U-Net"], abs=0.15)  # same rate, half the steps
    assert "; 2 threads; recipe: unet_heads 2, unet_batch 2" in out and "torch " in out


def test_the_machine_line_names_the_cpu_and_the_libraries():
    from policykit.emblems.train import machine

    line = machine()
    assert "torch " in line and "transformers " in line and "diffusers " in line and "numpy " in line
