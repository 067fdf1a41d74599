"""The emblems training recipe is seeded and resumable: same recipe, same bytes, interrupted or not."""

from dataclasses import replace

import pytest

from policykit.emblems.train import Checkpoints, Recipe, train
from policykit.models import resolve_model

pytestmark = pytest.mark.slow

TINY = replace(Recipe(), clip_steps=2, clip_batch=16, vae_steps=2, vae_batch=4, unet_steps=4, unet_batch=4,
               unet_images=32, unet_widths="32,64", unet_polish_steps=3)


def test_same_seed_same_files_and_a_loadable_pipeline(tmp_path):
    train(tmp_path / "a", TINY)
    train(tmp_path / "b", TINY)
    a, b = resolve_model(str(tmp_path / "a")), resolve_model(str(tmp_path / "b"))
    assert a.files == b.files
    assert {"model_index.json", "recipe.json", "clip/model.safetensors", "tokenizer/tokenizer.json",
            "tokenizer/vocab.json", "tokenizer/merges.txt"} <= set(a.files)
    assert a.sha256() == b.sha256()
    train(tmp_path / "c", replace(TINY, seed=1))
    assert resolve_model(str(tmp_path / "c")).sha256() != a.sha256()

    from policykit.emblems.sampling import load_pipeline

    pipe = load_pipeline(a.path)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


@pytest.mark.parametrize("stage", ["unet", "polish"])
def test_an_interrupted_run_continues_from_its_checkpoint_to_the_same_bytes(tmp_path, monkeypatch, stage):
    train(tmp_path / "straight", TINY)
    save = Checkpoints.save

    def save_then_stop(self, name, state):
        save(self, name, state)
        if name == stage and state["step"] == 2:
            raise KeyboardInterrupt(f"stopped half-way through the {stage} phase")

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", TINY, checkpoint_dir=tmp_path / "ckpt", checkpoint_minutes=0)
    assert (tmp_path / "ckpt" / f"{stage}.pt").exists() and (tmp_path / "ckpt" / "clip-done.pt").exists()
    monkeypatch.setattr(Checkpoints, "save", save)
    train(tmp_path / "resumed", TINY, checkpoint_dir=tmp_path / "ckpt", checkpoint_minutes=0)
    assert resolve_model(str(tmp_path / "resumed")).sha256() == resolve_model(str(tmp_path / "straight")).sha256()


def test_the_polish_phase_moves_only_the_unet(tmp_path):
    """Revision 2 adds the polish phase: its text encoder, CLIP and VAE are revision 1's bytes, its U-Net is not."""
    import hashlib

    def digests(folder):
        return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in folder.rglob("*.safetensors")}

    train(tmp_path / "r2", TINY)
    train(tmp_path / "r1", replace(TINY, unet_polish_steps=0))
    r1, r2 = digests(tmp_path / "r1"), digests(tmp_path / "r2")
    assert {k for k in r1 if r1[k] != r2[k]} == {"unet/diffusion_pytorch_model.safetensors"}


def test_a_checkpoint_folder_of_another_recipe_is_refused(tmp_path):
    Checkpoints(tmp_path, TINY, 5.0)
    with pytest.raises(SystemExit, match="another recipe"):
        Checkpoints(tmp_path, replace(TINY, seed=3), 5.0)
