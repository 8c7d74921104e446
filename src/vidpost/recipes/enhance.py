"""Training the toy prompt enhancer for ShapeWorld (`enhance/toy.py`).

    vidpost enhance train configs/shapeworld/enhance.yaml --out runs/enhance [key=value ...]
    vidpost enhance apply --enhancer runs/enhance < prompts.txt

Stage 1, SFT: teacher-forced cross-entropy on (terse prompt -> canonical caption) pairs from the world's
train split: `<s> terse <sep>` is the context and `canonical </s>` the target. Pair i is a pure function of
(data.seed, i) and step s trains on pairs (s-1)·B .. s·B-1, so the stream never repeats and a resumed run
ends with exactly the weights of an uninterrupted one. The canonical caption states the whole scene, so
the enhancer learns to keep what the prompt states and to fill in the rest (size, motion, background) as
the curated data does. Validation decodes eval-split terse prompts greedily and reports how many rewrites
parse as canonical captions, are complete, and state everything the prompt's intent states.

Stage 2 (GRPO on the video model's rewards) is not built yet.

The run directory:
    config.yaml              the resolved config
    checkpoints/sft/         step_NNNNNN/ (weights, optimizer, counters); the newest is resumed
    logs/metrics.jsonl       sft/loss, sft/lr, sft/grad_norm, sft/val_* (and TensorBoard)
    sft/                     the SFT enhancer (Hugging Face layout + enhancer.json): `--enhancer runs/enhance`
    summary.json             the final validation metrics
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from vidpost.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from vidpost.config import Config
from vidpost.enhance.toy import (
    CARD_NAME,
    build_toy_model,
    build_toy_tokenizer,
    completion_logprobs,
    prompt_ids,
    sample,
    save_toy,
    target_ids,
)
from vidpost.errors import CaptionError
from vidpost.recipes.common import (
    CheckpointConfig,
    NonfiniteStreak,
    OptimConfig,
    StopFlag,
    learning_rate,
    start_run,
    warn_stopped,
)
from vidpost.runlog import RunLog
from vidpost.world.config import DatasetConfig
from vidpost.world.dataset import prompt_record
from vidpost.world.grammar import parse_caption
from vidpost.world.spec import SceneSpec

log = logging.getLogger("vidpost")

STAGE_SFT = "sft"


class ToyModelConfig(Config):
    hidden_size: int = Field(64, ge=8, description="width of the tiny Qwen2")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(4, ge=1, description="attention heads (hidden_size must divide by it)")
    intermediate_size: int = Field(256, ge=8, description="MLP width")
    max_positions: int = Field(256, ge=32, description="longest prompt + rewrite, in tokens")
    seed: int = Field(0, description="seed of the random initialisation")


class PairsConfig(Config):
    seed: int = Field(0, description="pair i is a pure function of (seed, i); steps draw fresh pairs, never repeated")
    max_prompt_tokens: int = Field(64, ge=4, description="terse prompts are cut to this many tokens")
    eval_n: int = Field(128, ge=1, description="eval-split terse prompts decoded at each validation")
    eval_seed: int = Field(0, description="seed of the validation prompts")


class SFTStageConfig(Config):
    steps: int = Field(1500, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=1, description="pairs per step")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule")
    max_consecutive_nonfinite: int = Field(10, ge=1, description="stop after this many non-finite steps in a row")
    eval_every_steps: int = Field(0, ge=0, description="validate every N steps (0: only at the end)")


class EnhanceConfig(Config):
    model: ToyModelConfig = Field(default_factory=ToyModelConfig, description="the toy enhancer's architecture")
    data: PairsConfig = Field(default_factory=PairsConfig, description="(terse prompt, canonical caption) pairs")
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig, description="stage 1: supervised fine-tuning")
    max_new_tokens: int = Field(48, ge=1, description="most tokens of a rewrite (validation decoding)")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpointing")
    log_every_steps: int = Field(20, ge=1, description="write training metrics every N steps")


# ------------------------------------------------------------------------------------------ pure helpers


def training_pair(seed: int, index: int, split: str = "train") -> tuple[str, str]:
    """(terse prompt, canonical caption) of pair `index`: the texts of ShapeWorld clip `index` of that split."""
    record = prompt_record(DatasetConfig(n=index + 1, seed=seed, split=split), index)
    return record["terse"], record["canonical"]


def states_intent(rewrite: SceneSpec, intent: SceneSpec) -> bool:
    """Whether `rewrite` says everything `intent` says: the same objects (by colour) and every stated attribute."""
    if len(rewrite.objects) != len(intent.objects):
        return False
    if intent.background is not None and rewrite.background != intent.background:
        return False
    by_colour = {o.colour: o for o in rewrite.objects}
    for wanted in intent.objects:
        got = by_colour.get(wanted.colour)
        if got is None or got.shape != wanted.shape:
            return False
        for attribute in ("size", "motion", "speed"):
            if getattr(wanted, attribute) is not None and getattr(got, attribute) != getattr(wanted, attribute):
                return False
    return True


def rewrite_metrics(rewrites: list[str], intents: list[str]) -> dict[str, float]:
    """Fractions of rewrites that parse as canonical captions, are complete, and state their prompt's intent."""
    parsed, complete, stated = 0, 0, 0
    for text, intent in zip(rewrites, intents, strict=True):
        try:
            spec = parse_caption(text)
        except CaptionError:
            continue
        parsed += 1
        complete += spec.is_complete
        stated += states_intent(spec, parse_caption(intent))
    n = len(rewrites)
    return {"parse": parsed / n, "complete": complete / n, "intent": stated / n}


def sft_loss(model, tokenizer, pairs: list[tuple[str, str]], max_prompt_tokens: int) -> tuple[torch.Tensor, int]:
    """Mean negative log-likelihood per target token of `canonical </s>` after `<s> terse <sep>`; (loss, tokens)."""
    prompts = [prompt_ids(tokenizer, terse, max_prompt_tokens) for terse, _ in pairs]
    targets = [target_ids(tokenizer, canonical) for _, canonical in pairs]
    logp, mask = completion_logprobs(model, prompts, targets, tokenizer.pad_token_id)
    tokens = int(mask.sum())
    return -logp.sum() / tokens, tokens


# ------------------------------------------------------------------------------------------ the recipe


def _validation_set(cfg: PairsConfig) -> tuple[list[str], list[str]]:
    records = [prompt_record(DatasetConfig(n=cfg.eval_n, seed=cfg.eval_seed, split="eval"), i)
               for i in range(cfg.eval_n)]
    return [r["terse"] for r in records], [r["intent"] for r in records]


def _validate(model, tokenizer, prompts: list[str], intents: list[str], max_new_tokens: int) -> dict[str, float]:
    model.eval()
    rewrites = []
    for start in range(0, len(prompts), 64):
        rewrites += sample(model, tokenizer, prompts[start: start + 64], max_new_tokens).texts
    model.train()
    return {f"{STAGE_SFT}/val_{k}": v for k, v in rewrite_metrics(rewrites, intents).items()}


def train(cfg: EnhanceConfig, out: str | Path, progress: bool = True, stop_after: int | None = None) -> Path | None:
    """Run (or resume) the enhancer's training in `out`; return the final enhancer folder, or None if stopped.

    stop_after: stop (as SIGINT would) once this step is done; tests use it to interrupt a run.
    """
    out = Path(out)
    final = out / STAGE_SFT
    if start_run(cfg, out, finished=lambda run: final if (final / CARD_NAME).is_file() else None) is not None:
        return final

    s, m = cfg.sft, cfg.model
    tokenizer = build_toy_tokenizer(m.max_positions)
    model = build_toy_model(len(tokenizer), m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size,
                            m.max_positions, m.seed)
    model.train()
    params = dict(model.named_parameters())  # tied input/output embeddings appear once
    optimizer = torch.optim.AdamW(params.values(), lr=s.optim.learning_rate, betas=s.optim.betas,
                                  weight_decay=s.optim.weight_decay)
    checkpoints = out / "checkpoints" / STAGE_SFT
    start, state = 0, {"nonfinite_steps": 0}
    checkpoint = latest_checkpoint(checkpoints)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, params, optimizer)
        start = state.pop("step")
        log.info("resuming from %s (step %d of %d)", checkpoint, start, s.steps)
    elif progress:
        log.info("training a %.2fM-parameter toy enhancer", sum(p.numel() for p in params.values()) / 1e6)
    runlog = RunLog(out, resume_step=start)
    val_prompts, val_intents = _validation_set(cfg.data)
    nonfinite = NonfiniteStreak(s.max_consecutive_nonfinite, checkpoints)

    def save(step: int) -> None:
        if nonfinite.length:
            log.warning("step %d: no checkpoint while steps are non-finite", step)
            return
        save_checkpoint(checkpoints, step, params, optimizer, state, cfg.checkpoint.keep_last)

    bar = tqdm(total=s.steps, initial=start, desc="enhance sft", unit="step", disable=not progress)
    window: dict[str, list[float]] = {"loss": [], "grad_norm": [], "seconds": []}
    metrics: dict[str, float] = {}
    with StopFlag() as stop:
        for step in range(start + 1, s.steps + 1):
            tick = time.perf_counter()
            lr = learning_rate(s.optim, step, s.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            first = (step - 1) * s.batch_size
            pairs = [training_pair(cfg.data.seed, i) for i in range(first, first + s.batch_size)]
            loss, _ = sft_loss(model, tokenizer, pairs, cfg.data.max_prompt_tokens)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params.values(), s.optim.grad_clip)
            finite = bool(torch.isfinite(loss) and torch.isfinite(grad_norm))
            if finite:
                optimizer.step()
            else:
                state["nonfinite_steps"] += 1
                log.warning("step %d: non-finite loss or gradient; update skipped", step)
            optimizer.zero_grad(set_to_none=True)
            nonfinite.record(step, finite)
            window["loss"].append(loss.item())
            window["grad_norm"].append(grad_norm.item())
            window["seconds"].append(time.perf_counter() - tick)
            bar.update(1)
            bar.set_postfix(loss=f"{window['loss'][-1]:.4f}")
            if step % cfg.log_every_steps == 0 or step == s.steps:
                runlog.write(step, {
                    f"{STAGE_SFT}/loss": float(np.mean(window["loss"])),
                    f"{STAGE_SFT}/grad_norm": float(np.mean(window["grad_norm"])), f"{STAGE_SFT}/lr": lr,
                    f"{STAGE_SFT}/seconds_per_step": float(np.mean(window["seconds"])),
                    f"{STAGE_SFT}/nonfinite_steps": state["nonfinite_steps"],
                })
                window = {key: [] for key in window}
            if (s.eval_every_steps and step % s.eval_every_steps == 0) or step == s.steps:
                metrics = _validate(model, tokenizer, val_prompts, val_intents, cfg.max_new_tokens)
                runlog.write(step, metrics)
                bar.write(f"step {step}: " + ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in metrics.items()))
            stopping = stop.raised is not None or step == stop_after
            if step % cfg.checkpoint.every_steps == 0 or step == s.steps or stopping:
                save(step)
            if stopping:
                bar.close()
                runlog.close()
                warn_stopped(step, checkpoints)
                return None
    bar.close()
    runlog.close()
    tmp = out / f".{STAGE_SFT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_toy(model.eval(), tokenizer, tmp, {"stage": STAGE_SFT, "steps": s.steps, **metrics})
    tmp.rename(final)
    (out / "summary.json").write_text(json.dumps({"steps": s.steps, **state, **metrics}, indent=1) + "\n")
    return final
