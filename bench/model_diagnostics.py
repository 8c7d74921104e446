"""Where a ShapeWorld video model fails: denoising loss by noise level, attention locality, objects drawn from noise.

For each model (a shipped name, model directory or run directory):
- flow-matching loss at fixed σ on 64 curated eval clips, the same clips and noise for every model, so designs
  and training lengths compare directly (lower is better; the loss at high σ is where the layout is decided);
- on the same clips, the share of the added noise left in the one-step estimate x0 = x_σ - σ v (the
  regression of its error on σ·noise; 0 for a perfect denoiser): noise the velocity misses at low σ stays in
  every sample;
- self-attention of every block at σ 0.95, 0.7 and 0.4 on 8 eval clips: entropy relative to uniform and the
  attention mass on keys within one token (height, width) in the query's own frame group, against that share
  under uniform attention: a model whose tokens do not look at their neighbours draws patch-sized fragments;
- its denoising horizon: the same clips noised to σ0 (0.1 to 0.7) and integrated back by the model (8 Euler
  ODE steps, no guidance), scored by the ShapeWorld rewards: the highest σ0 from which the model still returns
  the caption's objects says how much of a sampling path it can carry, and, unlike the loss, it keeps moving
  with training (the 24x24 world's models score about 0.5 from σ0 0.4 and near 0 from noise: what fails is
  the part of the path where the layout is drawn);
- which words of the caption it uses: on the same clips and noise at σ 0.95, 0.8 and 0.6, how much larger the
  one-step x0 estimate's error gets when the caption states one attribute otherwise (every object's colour,
  shape, size, direction or speed, or the background) or is empty, relative to the right caption's error, over
  the clips whose caption states that attribute: 0 means the model ignores the word, and an attribute it ignores
  is one its samples follow only by chance (the 24x24 world's models ignore the direction);
- from noise (the model's recommended sampling, 32 eval captions): foreground blobs per frame against the
  number the captions ask for, the share of frames with exactly that count, and the ShapeWorld rewards with
  their diagnostics (heading: the share of objects whose fitted velocity goes the stated way).

    .venv/bin/python bench/model_diagnostics.py                           # shapeworld-base, shapeworld-sft
    .venv/bin/python bench/model_diagnostics.py --models runs/probe/model --name probe

Writes bench/results/<name>.json, bench/results/<name>.png (loss by σ) and bench/results/<name>_samples.png
(the first 8 videos from noise of each model, one row per video, frames left to right).
"""

from __future__ import annotations

import argparse
import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402
from shapeworld_models import DIAGNOSTICS  # noqa: E402

from vidpost.data.video_io import to_float, to_uint8  # noqa: E402
from vidpost.diffusion.sampler import GuidedVelocity, run_steps  # noqa: E402
from vidpost.diffusion.schedule import flow_matching_loss, noisy_sample  # noqa: E402
from vidpost.evaluation import SHAPEWORLD_SCORES, score_videos, shapeworld_prompts  # noqa: E402
from vidpost.generation import generate, recommended_sampling, recommended_video  # noqa: E402
from vidpost.models.load import load_model  # noqa: E402
from vidpost.rewards.shapeworld import score_clip  # noqa: E402
from vidpost.world.grammar import caption, parse_caption  # noqa: E402
from vidpost.world.render import render_scene  # noqa: E402
from vidpost.world.spec import BACKGROUNDS, COLOURS, SHAPES, SIZES, SPEEDS, SceneSpec  # noqa: E402

LOSS_SIGMAS = (0.1, 0.2, 0.5, 0.8, 0.9, 0.95)
GRID_VIDEOS = 8
HORIZON_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.55, 0.7)
HORIZON_STEPS = 8
ATTENTION_SIGMAS = (0.95, 0.7, 0.4)
SENSITIVITY_SIGMAS = (0.95, 0.8, 0.6)
ATTRIBUTES = ("colour", "shape", "size", "direction", "speed", "background")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def eval_clips(n: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """n curated eval captions and their clips (n, T, H, W, 3) in [0, 1].

    Layouts are drawn here rather than taken from world.dataset.make_clip so that the figures recorded in the
    README since 2026-12-01 stay comparable across probes."""
    captions = shapeworld_prompts("eval", n, seed=seed)
    frames = np.stack([render_scene(parse_caption(c), np.random.default_rng(100 + i)) for i, c in enumerate(captions)])
    return captions, torch.from_numpy(frames).float()


@torch.no_grad()
def denoising_by_sigma(model, x0: torch.Tensor, embeds: torch.Tensor, batch: int = 16) -> dict[str, dict]:
    """Per σ: "loss" (flow matching) and "noise_left" (share of σ·noise surviving in the one-step x0 estimate)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    out = {"loss": {}, "noise_left": {}}
    for sigma in LOSS_SIGMAS:
        losses, error_dot_noise = [], 0.0
        for rows in torch.arange(len(x0)).split(batch):
            s = torch.full((len(rows),), sigma)
            x_s = noisy_sample(x0[rows], noise[rows], s)
            v = model.velocity(x_s, s, embeds[rows])
            losses.append(flow_matching_loss(v, x0[rows], noise[rows]))
            error_dot_noise += ((x_s - sigma * v - x0[rows]) * noise[rows]).sum().item()
        out["loss"][str(sigma)] = torch.cat(losses).mean().item()
        out["noise_left"][str(sigma)] = error_dot_noise / (sigma * noise.pow(2).sum().item())
    return out


@torch.no_grad()
def denoising_horizon(
    model, captions: list[str], x0: torch.Tensor, embeds: torch.Tensor, batch: int = 16
) -> dict[str, dict]:
    """Per σ0: the mean ShapeWorld scores of the clips noised to σ0 and integrated back to σ = 0."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    out = {}
    for sigma in HORIZON_SIGMAS:
        grid = torch.linspace(sigma, 0.0, HORIZON_STEPS + 1, dtype=torch.float64)
        videos = []
        for rows in torch.arange(len(x0)).split(batch):
            x_s = noisy_sample(x0[rows], noise[rows], torch.full((len(rows),), sigma))
            videos.append(model.decode(run_steps(GuidedVelocity(model, embeds[rows]), x_s, grid).final))
        out[str(sigma)] = score_videos(to_uint8(torch.cat(videos).numpy()), captions)  # scored as saved
    return out


def _other(values, current: str) -> str:
    """The value after `current` in `values`, cyclically."""
    values = list(values)
    return values[(values.index(current) + 1) % len(values)]


def stated_otherwise(spec: SceneSpec, attribute: str) -> SceneSpec | None:
    """`spec` with `attribute` (one of ATTRIBUTES) of every object, or its background, stated otherwise; None where
    the caption does not state it (for the direction: states no object moving)."""
    if attribute == "background":
        return (
            None
            if spec.background is None
            else dataclasses.replace(spec, background=_other(BACKGROUNDS, spec.background))
        )
    if attribute == "colour":  # colours stay distinct within a scene: each object takes a colour the scene lacks
        free = [c for c in COLOURS if c not in {o.colour for o in spec.objects}]
        return dataclasses.replace(
            spec, objects=tuple(dataclasses.replace(o, colour=c) for o, c in zip(spec.objects, free, strict=False))
        )
    field = "motion" if attribute == "direction" else attribute
    values = {"shape": SHAPES, "size": SIZES, "direction": OPPOSITE, "speed": SPEEDS}[attribute]

    def changed(value: str | None) -> str | None:
        if value not in values:  # unstated, or still for the direction
            return value
        return OPPOSITE[value] if attribute == "direction" else _other(values, value)

    objects = tuple(dataclasses.replace(o, **{field: changed(getattr(o, field))}) for o in spec.objects)
    return None if objects == spec.objects else dataclasses.replace(spec, objects=objects)


@torch.no_grad()
def caption_sensitivity(
    model, captions: list[str], x0: torch.Tensor, embeds: torch.Tensor, batch: int = 16
) -> dict[str, dict[str, float]]:
    """Per attribute (and "caption": the empty caption) and σ: the one-step x0 estimate's mean squared error with
    that attribute stated otherwise over the right caption's (`embeds`), minus 1, on the clips whose caption states
    it."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))

    def errors(rows: torch.Tensor, rows_embeds: torch.Tensor, sigma: float) -> torch.Tensor:
        out = []
        for part, part_embeds in zip(rows.split(batch), rows_embeds.split(batch), strict=True):
            s = torch.full((len(part),), sigma)
            x_s = noisy_sample(x0[part], noise[part], s)
            v = model.velocity(x_s, s, part_embeds)
            out.append((x_s - sigma * v - x0[part]).pow(2).flatten(1).mean(1))
        return torch.cat(out)

    everything = torch.arange(len(captions))
    variants = {"caption": (everything, model.encode_prompts([""]).expand(len(captions), *embeds.shape[1:]))}
    specs = [parse_caption(c) for c in captions]
    for attribute in ATTRIBUTES:
        changed = [stated_otherwise(spec, attribute) for spec in specs]
        rows = [i for i, c in enumerate(changed) if c is not None]
        if rows:  # no caption states it: nothing to measure
            variants[attribute] = (torch.tensor(rows), model.encode_prompts([caption(changed[i]) for i in rows]))
    out: dict[str, dict[str, float]] = {name: {} for name in variants}
    for sigma in SENSITIVITY_SIGMAS:
        right = errors(everything, embeds, sigma)
        for name, (rows, rows_embeds) in variants.items():
            out[name][str(sigma)] = (errors(rows, rows_embeds, sigma).mean() / right[rows].mean()).item() - 1
    return out


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' Wan rotary embedding (WanAttnProcessor), applied to (B, L, heads, head_dim)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos[..., 0::2] - x2 * sin[..., 1::2]
    out[..., 1::2] = x1 * sin[..., 1::2] + x2 * cos[..., 0::2]
    return out


@torch.no_grad()
def attention_locality(model, captions: list[str], frames: torch.Tensor) -> list[dict]:
    """Per σ and block: entropy / log(L) and near-neighbour mass per head, recomputed from the block's q and k."""
    transformer = model.transformer
    weights: list[torch.Tensor] = []

    def capture(attn, args, kwargs, _out):
        hidden, rotary = args[0], (args[3] if len(args) > 3 else kwargs["rotary_emb"])
        q = _rope(attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1)), *rotary)
        k = _rope(attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1)), *rotary)
        weights.append(torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5, -1))

    hooks = [block.attn1.register_forward_hook(capture, with_kwargs=True) for block in transformer.blocks]
    x0 = model.codec.encode(frames)
    _, _, t, h, w = x0.shape
    pt, ph, pw = transformer.config.patch_size
    grid = torch.stack(
        torch.meshgrid(torch.arange(t // pt), torch.arange(h // ph), torch.arange(w // pw), indexing="ij"), -1
    ).reshape(-1, 3)  # (L, 3) token (t, h, w)
    near = (
        (grid[:, None, 0] == grid[None, :, 0]) & ((grid[:, None, 1:] - grid[None, :, 1:]).abs().amax(-1) <= 1)
    ).float()  # (L, L)
    near_if_uniform = near.sum(1).mean().item() / near.shape[1]
    rows = []
    try:
        embeds = model.encode_prompts(captions)
        for sigma in ATTENTION_SIGMAS:
            weights.clear()
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
            s = torch.full((len(x0),), sigma)
            model.velocity(noisy_sample(x0, noise, s), s, embeds)
            for block, a in enumerate(weights):  # a: (B, heads, L, L)
                entropy = -(a * a.clamp_min(1e-12).log()).sum(-1).mean((0, 2)) / np.log(a.shape[-1])
                rows.append(
                    {
                        "sigma": sigma,
                        "block": block,
                        "entropy_vs_uniform": entropy.tolist(),
                        "near_mass": (a * near).sum(-1).mean((0, 2)).tolist(),
                        "near_mass_if_uniform": near_if_uniform,
                    }
                )
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def blobs_from_noise(model, n: int, seed: int) -> tuple[dict[str, float], np.ndarray]:
    """Blob and reward figures of n videos sampled from noise, and the videos (n, T, H, W, 3) uint8."""
    prompts = shapeworld_prompts("eval", n, seed)
    videos = generate(
        model, prompts, recommended_sampling(model), recommended_video(model), seed=seed, progress=False
    ).videos
    specs = [parse_caption(p) for p in prompts]
    parts = [score_clip(v, spec) for v, spec in zip(to_float(videos), specs, strict=True)]  # rewards and their parts
    return {
        "blobs_per_frame": float(np.mean([p["blobs_per_frame"] for p in parts])),
        "asked_per_frame": float(np.mean([len(spec.objects) for spec in specs])),
        "frames_with_the_right_count": float(np.mean([p["count"] for p in parts])),
        **{key: float(np.mean([p[key] for p in parts])) for key in (*SHAPEWORLD_SCORES, *DIAGNOSTICS)},
    }, videos


def video_grid(videos: np.ndarray, border: int = 1) -> np.ndarray:
    """(n, T, H, W, 3) uint8 -> one image: a row per video, its frames left to right, on a gray border."""
    padded = np.pad(videos, ((0, 0), (0, 0), (border, border), (border, border), (0, 0)), constant_values=128)
    n, t, h, w, c = padded.shape
    return padded.transpose(0, 2, 1, 3, 4).reshape(n * h, t * w, c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["shapeworld-base", "shapeworld-sft"])
    parser.add_argument("--n", type=int, default=32, help="captions sampled from noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="model_diagnostics", help="results file stem")
    args = parser.parse_args()

    loss_captions, loss_frames = eval_clips(64, seed=5)
    attention_captions, attention_frames = loss_captions[:8], loss_frames[:8]
    rows, grids = [], []
    for ref in args.models:
        model = load_model(ref)
        model.transformer.eval()
        with torch.no_grad():
            loss_x0, loss_embeds = model.codec.encode(loss_frames), model.encode_prompts(loss_captions)
        denoising = denoising_by_sigma(model, loss_x0, loss_embeds)
        horizon = denoising_horizon(model, loss_captions, loss_x0, loss_embeds)
        sensitivity = caption_sensitivity(model, loss_captions, loss_x0, loss_embeds)
        from_noise, videos = blobs_from_noise(model, args.n, args.seed)
        row = {
            "model": ref,
            "loss_by_sigma": denoising["loss"],
            "noise_left_by_sigma": denoising["noise_left"],
            "horizon_by_sigma": horizon,
            "attention": attention_locality(model, attention_captions, attention_frames),
            "caption_sensitivity": sensitivity,
            "from_noise": from_noise,
        }
        rows.append(row)
        grids.append(video_grid(videos[:GRID_VIDEOS]))
        print(
            f"{ref}: loss "
            + " ".join(f"σ{s} {v:.4f}" for s, v in row["loss_by_sigma"].items())
            + "; noise left "
            + " ".join(f"σ{s} {v:.3f}" for s, v in row["noise_left_by_sigma"].items())
            + "; total from noised clips "
            + " ".join(f"σ{s} {v['total']:.3f}" for s, v in horizon.items())
            + f"; blobs/frame {from_noise['blobs_per_frame']:.2f} (asked {from_noise['asked_per_frame']:.2f}),"
            f" right count {from_noise['frames_with_the_right_count']:.3f}, total {from_noise['total']:.3f},"
            f" heading {from_noise['heading']:.3f}",
            flush=True,
        )
        for name, by_sigma in sensitivity.items():
            label = "the caption emptied" if name == "caption" else f"the {name} stated otherwise"
            print(f"  x0 error with {label}: " + " ".join(f"σ{s} {v:+.1%}" for s, v in by_sigma.items()))
        for a in row["attention"]:
            print(
                f"  σ {a['sigma']} block {a['block']}: near mass {np.round(a['near_mass'], 3).tolist()}"
                f" (uniform {a['near_mass_if_uniform']:.3f}),"
                f" entropy/uniform {np.round(a['entropy_vs_uniform'], 2).tolist()}"
            )

    write_results(
        args.name,
        loss_sigmas=LOSS_SIGMAS,
        horizon={"sigmas": HORIZON_SIGMAS, "euler_steps": HORIZON_STEPS, "guidance": 1.0},
        caption_sensitivity={"sigmas": SENSITIVITY_SIGMAS, "attributes": ATTRIBUTES},
        rows=rows,
    )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in rows:
        ax.plot(LOSS_SIGMAS, list(row["loss_by_sigma"].values()), marker="o", label=row["model"])
    ax.set_xlabel("σ")
    ax.set_ylabel("flow-matching loss (64 eval clips)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(len(grids), 1, figsize=(10, 8.5 * len(grids)), squeeze=False)
    for ax, grid, row in zip(axes[:, 0], grids, rows, strict=True):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(f"{row['model']}: from noise, one video per row", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}_samples.png", dpi=100)
    print(f"wrote {RESULTS / (args.name + '.json')}")


if __name__ == "__main__":
    main()
