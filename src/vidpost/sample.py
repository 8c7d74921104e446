"""`vidpost sample`: load a model by name or directory, generate one video per prompt, write a dataset folder.

    vidpost sample --model shapeworld-base --prompts prompts.txt --out runs/samples
    vidpost score runs/samples

Each clip's metadata keeps its prompt as `caption`; `sample.json` in the folder records the model, the
sampling settings used (the model card's recommendation unless overridden), the acceleration (feature cache,
compile, attention backend), forward passes (NFE), seconds per video and peak memory.

    vidpost sample --model shapeworld-base --prompts prompts.txt --out runs/fast --cache first_block --compile

With `--enhancer NAME_OR_DIR` each prompt is rewritten first (enhance/); the clip's metadata keeps the prompt as
`caption` and the rewrite the video was generated from as `prompt_used`, and sample.json records the enhancer's
config and how many rewrites fell back to the prompt.

    vidpost sample --model shapeworld-sft --prompts terse.txt --out runs/enhanced --enhancer shapeworld-enhancer
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from vidpost.atomic import atomic_path
from vidpost.data.dataset import DatasetWriter
from vidpost.data.prompts import read_prompts
from vidpost.diffusion.config import SamplingConfig
from vidpost.generation import generate, recommended_sampling, recommended_video
from vidpost.inference.acceleration import AccelerationConfig
from vidpost.models.load import load_model
from vidpost.precision import resolve_precision


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sample_to_folder(
    model_ref: str,
    prompts_path: str,
    out: str | Path,
    seed: int = 0,
    sampling_overrides: dict | None = None,
    batch_size: int = 16,
    precision: str = "float32",
    fmt: str = "npy",
    overwrite: bool = False,
    progress: bool = True,
    acceleration: AccelerationConfig | None = None,
    enhancer: str | None = None,
) -> dict:
    """Generate and write; return (and save as sample.json) what was used and measured.

    `acceleration` (inference/acceleration.py) is recorded too; a cache never lowers `nfe_per_video`, which
    counts transformer calls, however much of each call the cache skipped.
    """
    prompts = read_prompts(prompts_path)
    used, enhanced = prompts, None
    if enhancer is not None:  # rewritten before the video model is loaded, so the two never share memory
        from vidpost.enhance.resolve import load_enhancer

        rewriter = load_enhancer(enhancer)
        used = rewriter.rewrite(prompts)
        enhanced = {
            "ref": enhancer,
            "config": rewriter.cfg.model_dump(mode="json"),
            "summary": rewriter.counts.summary(),
            **rewriter.counts.as_metrics(prefix=""),
        }
        del rewriter
    model = load_model(model_ref)
    sampling = SamplingConfig.model_validate({**recommended_sampling(model).model_dump(), **(sampling_overrides or {})})
    video = recommended_video(model)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    tick = time.perf_counter()
    generated = generate(
        model,
        used,
        sampling,
        video,
        seed=seed,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        acceleration=acceleration,
    )
    seconds = time.perf_counter() - tick
    out = Path(out)
    with DatasetWriter(out, overwrite=overwrite) as writer:
        for j, (frames, prompt, prompt_used) in enumerate(zip(generated.videos, prompts, used, strict=True)):
            extra = {"prompt_used": prompt_used} if enhanced is not None else {}
            writer.add(frames, prompt, ext=f".{fmt}", seed=seed + j, **extra)
    report = {
        "model": model_ref,
        "videos": len(prompts),
        "sampling": sampling.model_dump(),
        "video": video.model_dump(),
        "seed": seed,
        "precision": resolve_precision(precision, model.device),
        "acceleration": generated.acceleration,
        "enhancer": enhanced,
        "nfe_per_video": generated.nfe_per_video,
        "seconds_per_video": seconds / len(prompts),
        "peak_memory_mb": _peak_memory_mb(model.device),
    }
    with atomic_path(out / "sample.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    return report
