"""Time every RealEra stage on Stable-Diffusion-sized components (SD 1.5, SD 2.1 or SDXL) with random weights.

Nothing is downloaded: the U-Net has SD 1.5's config, the text encoder is a
CLIP ViT-L/14 text tower, the VAE is SD's AutoencoderKL, all randomly
initialised; the tokenizer is a small byte-level BPE built here (it only has
to place the concept's tokens; the embedding table keeps CLIP's 49,408 rows).
Random weights make the numbers meaningless as erasure, but the cost of each
stage is the cost on the real model.

    python benchmarks/gpu_check.py                 # CPU, reduced size (--size small)
    python benchmarks/gpu_check.py --size full     # 512 px, SD 1.5 widths (a GPU)
    python benchmarks/gpu_check.py --size full --concepts 10 --marginal
    python benchmarks/gpu_check.py --arch sd21 --size full   # SD 2.1: OpenCLIP-H text, v-prediction, 768 px

    python benchmarks/gpu_check.py --arch sdxl --size full   # SDXL: CLIP-L + OpenCLIP-bigG (2048-wide rows), 1024 px

SDXL's components are its base model's configs: the U-Net with transformer
depths 1, 2, 10, 2048-wide cross-attention and ``text_time`` added conditions
(pooled 1280 + 6 time ids x 256), CLIP ViT-L and OpenCLIP bigG text towers
(12 and 32 layers; the second with its 1280 projection), SD's VAE at 1024 px.

Prints one table: each stage's seconds, its seconds per concept and its key
numbers, then a 25-step generation of one image (what apply's audit pays per
image). ``--marginal`` (with ``--concepts N`` > 1) also runs the same plan
for 1 concept and adds each stage's cost per extra concept,
``(T_N - T_1) / (N - 1)``: what one more concept costs, without the fixed
costs (encoding the preserves, the solve, the LoRA steps, whose number does
not grow with the concepts). The 1-concept run comes second, so the
process's warm-up (CUDA context, kernel selection) falls on the N-concept
run: the marginal cost is, if anything, too high.

On a GPU (or with ``--write``) the table also goes to section ``gpu_check``
of docs/benchmarks.md, with the command, the date and the machine (the
card's name included); ``--no-write`` prints only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Words the benchmark tokenizer knows; concepts are drawn from these.
WORDS = ["a", "photo", "of", "painting", "picture", "in", "the", "style", "person", "cat", "dog", "mickey", "mouse",
         "red", "circle", "blue", "square", "cartoon", "van", "gogh", "car", "tree", "house", "bird", "city"]
CONCEPTS = ["mickey mouse", "van gogh", "red circle", "blue square", "cat", "dog", "car", "tree", "house", "bird"]

SIZES = {
    # SD 1.5 (runwayml/stable-diffusion-v1-5 configs), written out: nothing is fetched.
    "full": dict(image=512, text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12),
                 unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                           norm_num_groups=32),
                 vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)),
    # The same structure (4 levels, 3 with cross-attention, 768-wide text) at a size a laptop CPU runs.
    "small": dict(image=128, text=dict(hidden_size=768, intermediate_size=1024, num_hidden_layers=2,
                                       num_attention_heads=12),
                  unet=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=8,
                            norm_num_groups=16),
                  vae=dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16)),
}


#: SD 2.1 (stabilityai/stable-diffusion-2-1 configs), written out: OpenCLIP ViT-H text tower (23 layers as
#: diffusers keeps it), 1024-wide cross-attention with linear projections, v-prediction, 768 px.
SD21_SIZES = {
    "full": dict(image=768, text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                      num_attention_heads=16),
                 unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                           attention_head_dim=(5, 10, 20, 20), norm_num_groups=32),
                 vae=SIZES["full"]["vae"]),
    "small": dict(image=128, text=dict(hidden_size=1024, intermediate_size=1024, num_hidden_layers=2,
                                       num_attention_heads=16),
                  unet=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, attention_head_dim=(2, 4, 4, 4),
                            norm_num_groups=16),
                  vae=SIZES["small"]["vae"]),
}
#: SDXL base (stabilityai/stable-diffusion-xl-base-1.0 configs), written out. ``text_2`` is OpenCLIP bigG.
SDXL_SIZES = {
    "full": dict(image=1024, text=SIZES["full"]["text"],
                 text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20),
                 unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
                           transformer_layers_per_block=(1, 2, 10), norm_num_groups=32, addition_time_embed_dim=256),
                 vae=SIZES["full"]["vae"]),
    "small": dict(image=128, text=SIZES["small"]["text"],
                  text_2=dict(hidden_size=1280, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=20),
                  unet=dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=(2, 4, 4),
                            transformer_layers_per_block=(1, 1, 2), norm_num_groups=16, addition_time_embed_dim=32),
                  vae=SIZES["small"]["vae"]),
}
ARCHES = ("sd15", "sd21", "sdxl")


def spec_for(arch: str, size: str) -> dict:
    """The component sizes of ``arch`` at ``size``."""
    return {"sd21": SD21_SIZES, "sdxl": SDXL_SIZES}.get(arch, SIZES)[size]


def build_tokenizer(arch: str = "sd15"):
    """A CLIP BPE tokenizer over letters plus :data:`WORDS` (77 tokens): SD 1.x padding, or SD 2.x's ``!``."""
    from policykit.testing import build_clip_tokenizer

    return build_clip_tokenizer(pad_token="!" if arch == "sd21" else "<|endoftext|>", max_length=77, words=WORDS)


def build_pipeline(size: str, seed: int = 0, arch: str = "sd15"):
    """A pipeline of random SD-1.5-, SD-2.1- or SDXL-shaped components (float32, CPU)."""
    import torch

    if arch == "sdxl":
        return build_sdxl_pipeline(size, seed)
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = spec_for(arch, size)
    sd21 = arch == "sd21"
    tokenizer = build_tokenizer(arch)
    width = spec["text"]["hidden_size"]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_act="gelu" if sd21 else "quick_gelu",
        projection_dim=width, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **spec["text"])).eval()
    unet = UNet2DConditionModel(
        sample_size=spec["image"] // 8, in_channels=4, out_channels=4, cross_attention_dim=width,
        use_linear_projection=sd21,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **spec["unet"]).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=spec["image"],
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **spec["vae"]).eval()
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", steps_offset=1,
                                            prediction_type="v_prediction" if sd21 else "epsilon")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl_pipeline(size: str, seed: int = 0):
    """A StableDiffusionXLPipeline of random SDXL-shaped components (float32, CPU)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec = spec_for("sdxl", size)
    tokenizer, tokenizer_2 = build_tokenizer("sd15"), build_tokenizer("sd21")  # SDXL's second pads with "!"
    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_act="quick_gelu", pad_token_id=tokenizer.pad_token_id,
                                                projection_dim=768, **common, **spec["text"])).eval()
    pooled = spec["text_2"]["hidden_size"]
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_act="gelu", pad_token_id=tokenizer_2.pad_token_id, projection_dim=pooled, **common,
        **spec["text_2"])).eval()
    unet_spec = dict(spec["unet"])
    time_dim = unet_spec.pop("addition_time_embed_dim")
    unet = UNet2DConditionModel(
        sample_size=spec["image"] // 8, in_channels=4, out_channels=4, use_linear_projection=True,
        cross_attention_dim=spec["text"]["hidden_size"] + pooled,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled + 6 * time_dim, **unet_spec).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=spec["image"], scaling_factor=0.13025,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, **spec["vae"]).eval()
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_plan(concepts: int, steps: int, samples: int, method: str):
    """A plan erasing the first ``concepts`` of :data:`CONCEPTS` (cycled), 3 templates, one preserve."""
    from policykit.plan import compile_plan
    from policykit.policy.schema import Policy

    names = [CONCEPTS[i % len(CONCEPTS)] + ("" if i < len(CONCEPTS) else f" {'a' * (i // len(CONCEPTS))}")
             for i in range(concepts)]
    policy = {
        "apiVersion": "policykit/v1alpha1", "kind": "ErasurePolicy",
        "metadata": {"name": "gpu-check", "version": "1.0.0"}, "base_model": {"id": "random-sd15"},
        "defaults": {"templates": ["a photo of {}", "a painting of {}", "a picture of {}"],
                     "neighbors": {"samples": samples, "space": "text"}},
        "erase": [{"concept": n, "anchor": "a person"} for n in names],
        "preserve": [{"concept": "a city"}],
        "training": {"method": method, "lora": {"steps": steps, "batch_size": 1}},
    }
    return compile_plan(Policy.model_validate(policy))


def run_stages(pipe, plan, size: str, device: str | None):
    """Run the plan's edit stages on ``pipe`` (left as it came); returns the EditResult."""
    from policykit.realera.engine import EngineOptions, run_plan

    # Latents at the model's size, 1 per template (apply uses 2): enough to time a step of each kind.
    options = EngineOptions(latents_per_prompt=1, latent_steps=25)
    return run_plan(plan, pipe, inputs_key=f"gpu-check:{size}", options=options, device=device,
                    log=lambda line: None, progress=False)


def _numbers(info: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


def stage_rows(edit, concepts: int, baseline=None) -> list[list[str]]:
    """One row per engine stage plus their total: seconds, seconds per concept, marginal cost, numbers."""
    first = {r.name: r.seconds for r in baseline.records} if baseline is not None else {}
    rows = []

    def row(name: str, seconds: float, one: float | None, numbers: str) -> list[str]:
        cells = [name, f"{seconds:.2f}", f"{seconds / concepts:.3f}"]
        if baseline is not None:
            cells.append("" if one is None else f"{(seconds - one) / (concepts - 1):.3f}")
        return cells + [numbers]

    for record in edit.records:
        rows.append(row(record.name, record.seconds, first.get(record.name), _numbers(record.info)))
    total = sum(r.seconds for r in edit.records)
    rows.append(row("edit stages, total", total, sum(first.values()) if first else None,
                    f"{concepts} concept(s)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build, run every stage once, print the table (and write it on a GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHES, default="sd15", help="model architecture (default: sd15)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--concepts", type=int, default=1)
    parser.add_argument("--marginal", action="store_true",
                        help="also run 1 concept and report each stage's cost per extra concept")
    parser.add_argument("--steps", type=int, default=20, help="noise-alignment steps (default: 20)")
    parser.add_argument("--samples", type=int, default=16, help="neighbors per phrase and template (default: 16)")
    parser.add_argument("--method", default="realera")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    writing = parser.add_mutually_exclusive_group()
    writing.add_argument("--write", action="store_true",
                         help="write section gpu_check of docs/benchmarks.md (default: only on a GPU)")
    writing.add_argument("--no-write", action="store_true", help="never write docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.concepts < 1:
        parser.error("--concepts must be >= 1")
    if args.marginal and args.concepts < 2:
        parser.error("--marginal needs --concepts N with N >= 2")
    import torch

    from policykit.cli import _drop_torchvision_notices
    from policykit.realera.edit import apply_edit
    from policykit.realera.engine import pick_device

    _drop_torchvision_notices()  # as the CLI does for model commands
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = build_pipeline(args.size, arch=args.arch)
    build_seconds = time.perf_counter() - started
    device, dtype = pick_device(args.device)
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    summary = (f"{args.arch}, size {args.size} ({spec_for(args.arch, args.size)['image']} px, U-Net "
               f"{params:.0f}M parameters), "
               f"{device.type} {str(dtype).replace('torch.', '')} ({card}), {args.concepts} concept(s), "
               f"method {args.method}, NA steps {args.steps}, {args.samples} neighbors per template, "
               f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"gpu_check: {summary}")
    edit = run_stages(pipe, build_plan(args.concepts, args.steps, args.samples, args.method), args.size, args.device)
    baseline = None
    if args.marginal:  # second: any warm-up is charged to the N concepts, not subtracted from them
        baseline = run_stages(pipe, build_plan(1, args.steps, args.samples, args.method), args.size, args.device)

    headers = ["stage", "seconds", "s / concept"] + (["s / extra concept"] if baseline is not None else []) \
        + ["key numbers"]
    blank = [""] * (len(headers) - 3)
    rows = [["build components", f"{build_seconds:.2f}", *blank, ""]]
    rows += stage_rows(edit, args.concepts, baseline)
    started = time.perf_counter()
    edited = apply_edit(pipe, edit)
    rows.append(["apply edit", f"{time.perf_counter() - started:.2f}", *blank, f"{len(edit.weights)} projections"])
    started = time.perf_counter()
    with torch.no_grad():
        size = spec_for(args.arch, args.size)["image"]
        edited("a photo of a cat", num_inference_steps=25, generator=torch.Generator("cpu").manual_seed(0),
               output_type="np", height=size, width=size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rows.append(["generate 1 image, 25 steps", f"{time.perf_counter() - started:.2f}", *blank,
                 "audit cost per image"])

    from report import header, markdown_table, text_table, write_section

    print(text_table(headers, rows))
    notes = [summary + "."]
    if device.type == "cuda":
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
        print(peak)
        notes.append(peak.capitalize() + ".")
    if args.write or (device.type == "cuda" and not args.no_write):
        table = markdown_table(headers, rows, "l" + "r" * (len(headers) - 2) + "l")
        section = "gpu_check" if args.arch == "sd15" else f"gpu_check_{args.arch}"
        path = write_section(section, "\n\n".join([header(argv), table, *notes]))
        print(f"wrote section `{section}` of {path.relative_to(Path(__file__).resolve().parents[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
