"""`vidpost report RUN`: one self-contained HTML page (no network) for a `vidpost run` directory.

Per stage: the held-out table, training curves (PNG; the series metric_names.CURVES names for its recipe) and a
grid of the same prompts and seeds across stages as animated GIFs, where a column made through an enhancer says
so and shows each rewrite under its video; images are embedded as data URIs so the page is a single file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from vidpost.atomic import atomic_path
from vidpost.errors import VidpostError
from vidpost.metric_names import CURVES
from vidpost.pipeline.heldout import (
    DIFFERENCES_HEAD,
    HELDOUT_FILE,
    PAIRED_KEYS,
    TABLE_KEYS,
    HeldoutClip,
    heldout_clips,
    stage_differences,
    table_cells,
)
from vidpost.runlog import read_metrics

REPORT_NAME = "report.html"
GIF_SCALE = 4  # 24x24 frames are too small to see


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def gif(frames: np.ndarray, scale: int = GIF_SCALE, ms_per_frame: int = 150) -> bytes:
    """uint8 (T, H, W, 3) -> an endlessly looping animated GIF, upscaled without smoothing."""
    images = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.Resampling.NEAREST) for f in frames
    ]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    return buffer.getvalue()


def logged_curves(rows: list[dict], keys: tuple[str, ...]) -> list[str]:
    """The series of `keys` that the run log `rows` holds, in the order of `keys`."""
    return [k for k in keys if any(k in r for r in rows)]


def curves_png(rows: list[dict], keys: list[str]) -> bytes:
    """One small plot per series against the step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _table(rows: dict[str, dict]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("stage", *TABLE_KEYS))
    body = []
    for stage, row in rows.items():
        cells = "".join(f"<td>{cell}</td>" for cell in table_cells(row))
        body.append(f"<tr><td>{html.escape(stage)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _differences(rows: dict[str, dict]) -> str:
    differences = stage_differences(rows)
    if not differences:
        return ""
    head = "".join(f"<th>{k}</th>" for k in ("stage", *(f"{k} change" for k in PAIRED_KEYS)))
    body = "".join(
        f"<tr><td>{html.escape(stage)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for stage, cells in differences
    )
    return f"<p>{html.escape(DIFFERENCES_HEAD)}</p><table><tr>{head}</tr>{body}</table>"


def _column_head(stage: str, row: dict) -> str:
    """The stage's name; with an enhancer, which video model drew the videos and which enhancer wrote their prompts."""
    if row.get("enhancer") is None:
        return f"<th>{html.escape(stage)}</th>"
    model, enhancer = Path(row["model"]).name, Path(row["enhancer"]).name
    return (
        f"<th>{html.escape(stage)}<div class='sub'>{html.escape(model)}'s videos of "
        f"{html.escape(enhancer)}'s rewrites</div></th>"
    )


def _cell(clip: HeldoutClip) -> str:
    rewrite = "" if clip.rewrite is None else f"<div class='rw'>{html.escape(clip.rewrite)}</div>"
    return f'<td><img src="{_data_uri(gif(clip.video), "image/gif")}">{rewrite}</td>'


def _grid(run: Path, rows: dict[str, dict], n: int) -> str:
    stages = list(rows)
    clips = {s: heldout_clips(run / s, n) for s in stages}  # the same prompts and seeds in every stage
    prompts = [clip.prompt for clip in clips[stages[0]]]
    head = "<th>prompt</th>" + "".join(_column_head(s, rows[s]) for s in stages)
    body = []
    for i, prompt in enumerate(prompts):
        cells = "".join(_cell(clips[s][i]) if i < len(clips[s]) else "<td></td>" for s in stages)
        body.append(f"<tr><td class='cap'>{html.escape(prompt)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(run: str | Path) -> Path:
    """Write RUN/report.html from the run's held-out rows, logs and videos; return its path."""
    from vidpost.config import load_config
    from vidpost.pipeline.config import PipelineConfig

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise VidpostError(f"{run}: not a `vidpost run` directory (no config.yaml)")
    try:
        cfg = load_config(PipelineConfig, run / "config.yaml")
    except VidpostError:
        raise VidpostError(
            f"{run}: not a `vidpost run` directory (its config.yaml is not a pipeline's; a training "
            "run's samples are in its samples/ folder)"
        ) from None
    stages = ["base", *[s.name for s in cfg.stages]]
    rows = {s: json.loads((run / s / HELDOUT_FILE).read_text()) for s in stages if (run / s / HELDOUT_FILE).is_file()}
    parts = [
        f"<h1>vidpost run: {html.escape(run.name)}</h1>",
        f"<p>Held-out table: {cfg.heldout.n} {cfg.heldout.split} prompts, one video each, the same seeds for "
        "every stage, each model's recommended sampling; rewards are scored against the user's prompt.</p>",
        _table(rows) + _differences(rows) if rows else "<p>No stage has finished yet.</p>",
    ]
    for stage in stages[1:]:
        metrics = read_metrics(run / stage) if (run / stage / "logs").is_dir() else []
        keys = logged_curves(metrics, CURVES[stage])
        if keys:
            png, names = _data_uri(curves_png(metrics, keys), "image/png"), html.escape(", ".join(keys))
            parts.append(f'<h2>{stage}: training curves</h2><img src="{png}" alt="{names}" title="{names}">')
    done = {s: rows[s] for s in stages if s in rows}
    if cfg.heldout.grid and done:
        parts.append("<h2>The same prompts and seeds across stages</h2>" + _grid(run, done, cfg.heldout.grid))
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td.cap{text-align:left;max-width:22em}"
        "img{image-rendering:pixelated}div.sub{font-weight:normal;font-size:80%}"
        "div.rw{font-size:75%;max-width:14em;text-align:left;color:#444}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>vidpost run {html.escape(run.name)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    target = run / REPORT_NAME
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
