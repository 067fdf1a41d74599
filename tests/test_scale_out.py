"""Several processes through accelerate (docs/scale-out.md): `accelerate launch` of `policykit apply` and
`policykit audit` as 2 CPU processes (gloo) share the work, publish one artifact with the one-process audit
metrics, write reports identical to one process's, and a process killed mid-run publishes nothing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict:
    # accelerate 1.x: `--cpu --num_processes 2` starts one process unless MPI is configured;
    # ACCELERATE_USE_CPU=1 with --multi_gpu starts 2 gloo processes on the CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    return env


def _launch(*args: str, port: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(port), "-m", "policykit", *args]


def _workdir(tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    work.mkdir()
    shutil.copytree(REPO / "policies", work / "policies")
    return work


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """policies/demo.yaml applied by one process (1 thread, as each of the two below)."""
    work = _workdir(tmp_path_factory.mktemp("one"), "w")
    done = subprocess.run([sys.executable, "-m", "policykit", "apply", "policies/demo.yaml", "--threads", "1"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def test_two_processes_share_the_work_and_publish_one_artifact_with_the_same_audit(tmp_path, one_process):
    work = _workdir(tmp_path, "two")
    done = subprocess.run(_launch("apply", "policies/demo.yaml", "--threads", "1", port=29611), cwd=work,
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("audit/report.html") == 1, done.stderr  # one summary: the helper says nothing
    two = json.loads((work / "artifacts/demo/1.0.0/manifest.json").read_text())
    one = json.loads((one_process / "artifacts/demo/1.0.0/manifest.json").read_text())
    assert two["metrics"] == one["metrics"]
    # the work was shared: each process drew images and training latents, together all of them
    work_done = two["runtime"]["processes"]["work"]
    assert two["runtime"]["processes"]["count"] == 2 and len(work_done) == 2
    assert all(w["images"] > 0 and w["latents"] > 0 for w in work_done)
    report = json.loads((work / "artifacts/demo/1.0.0/audit/report.json").read_text())
    audited = sum(p["images"] for scale in report["scales"] for p in scale["prompts"])
    assert sum(w["images"] for w in work_done) == 2 * audited  # base and edited model
    # the closed form ran once and is the same bytes; the LoRA is data parallel: the same to float order
    weights = "artifacts/demo/1.0.0/weights/cross_attention_delta.safetensors"
    assert (work / weights).read_bytes() == (one_process / weights).read_bytes()
    from safetensors.torch import load_file

    lora = "artifacts/demo/1.0.0/weights/lora/pytorch_lora_weights.safetensors"
    a, b = load_file(work / lora), load_file(one_process / lora)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in a) < 1e-3
    assert report["verdict"] == json.loads(
        (one_process / "artifacts/demo/1.0.0/audit/report.json").read_text())["verdict"]
    # nothing but the artifact and its lock: the helper wrote nothing
    assert sorted(p.name for p in (work / "artifacts/demo").iterdir()) == sorted(
        p.name for p in (one_process / "artifacts/demo").iterdir())


def test_a_reaudit_with_two_processes_writes_the_same_reports_as_one(tmp_path, one_process):
    artifact = one_process / "artifacts/demo/1.0.0"
    alone = subprocess.run([sys.executable, "-m", "policykit", "audit", str(artifact), "--allow-unsigned",
                            "--out", str(tmp_path / "one")], env=_env(), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    shared = subprocess.run(_launch("audit", str(artifact), "--allow-unsigned", "--out", str(tmp_path / "two"),
                                    port=29612), env=_env(), capture_output=True, text=True, timeout=600)
    assert shared.returncode == 0, shared.stderr[-3000:]
    for name in ("report.json", "report.md", "report.html"):  # every image is the same image
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(c) for c in children]
    return found + [g for c in found for g in _children(c)]


def _rank(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the helper process through /proc")
def test_a_process_killed_mid_run_publishes_nothing_and_the_rerun_completes(tmp_path):
    work = _workdir(tmp_path, "killed")
    command = _launch("apply", "policies/demo.yaml", "--threads", "1", "--json", "--cache-dir", "cache",
                      port=29613)
    launcher = subprocess.Popen(command, cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    killed = None
    try:
        for line in launcher.stdout:  # the main process's events; kill the helper once the audit draws
            if '"event": "progress"' in line or '"audit' in line:
                helpers = [p for p in _children(launcher.pid) if _rank(p) == "1"]
                assert helpers, "no helper process found"
                killed = helpers[0]
                os.kill(killed, signal.SIGKILL)
                break
        code = launcher.wait(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert killed is not None and code != 0
    time.sleep(0.5)
    assert not (work / "artifacts/demo/1.0.0").exists()
    rerun = subprocess.run(command, cwd=work, env=_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = json.loads((work / "artifacts/demo/1.0.0/manifest.json").read_text())
    assert manifest["status"] == "passed" and manifest["runtime"]["processes"]["count"] == 2
    assert not [p for p in (work / "artifacts/demo").iterdir() if "staging" in p.name]


def test_a_stage_the_main_process_runs_alone_does_not_wait_for_the_others(tmp_path):
    """MACE's LoRA stage runs once, on the main process, and draws its training latents there: its
    work must not be shared out to processes that are waiting for its output."""
    import torch

    from policykit.testing import build_tiny_pipeline

    torch.set_num_threads(1)
    build_tiny_pipeline().save_pretrained(tmp_path / "tiny")
    (tmp_path / "policy.yaml").write_text(f"""\
apiVersion: policykit/v1alpha1
kind: ErasurePolicy
metadata: {{name: tiny-mace, version: 1.0.0}}
base_model: {{id: {tmp_path / "tiny"}}}
defaults:
  templates: ["a photo of {{}}"]
erase:
  - concept: red circle
    anchor: blue circle
training:
  method: mace
  lora: {{steps: 2, batch_size: 2, rank: 2}}
audit: {{enabled: false}}
output: {{dir: artifacts}}
""")
    done = subprocess.run(_launch("apply", "policy.yaml", "--threads", "1", port=29614), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)  # a deadlock hangs: fail, not wait
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "artifacts/tiny-mace/1.0.0/manifest.json").read_text())
    stages = [s["name"] for s in manifest["stages"]]
    assert "mace_lora" in stages and manifest["runtime"]["processes"]["count"] == 2
    # the main process drew MACE's latents by itself; no audit, so nothing else was shared
    assert [w.get("latents", 0) > 0 for w in manifest["runtime"]["processes"]["work"]] == [True, False]
