"""What every training recipe shares besides its loop (recipes/loop.py): optimizer and checkpoint settings, the
learning-rate schedule, seeds, EMA, the run directory, clean stops on SIGINT/SIGTERM and on runs of non-finite
steps, validation videos and the final model.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from vidpost import dist
from vidpost.checkpoint import latest_checkpoint, run_checkpoints
from vidpost.config import Config, load_config, save_config
from vidpost.data.dataset import DatasetWriter
from vidpost.diffusion.config import SamplingConfig, VideoConfig
from vidpost.errors import VidpostError
from vidpost.evaluation import score_videos
from vidpost.generation import generate
from vidpost.inference.acceleration import AccelerationConfig
from vidpost.metric_names import VAL
from vidpost.models.config import ModelConfig
from vidpost.models.resolve import LORA_DIR, MODEL_DIR, write_card
from vidpost.models.wan import WanVideoModel
from vidpost.rewards.registry import check_reward_names
from vidpost.rewards.remote import register_remote
from vidpost.world.config import WorldConfig

log = logging.getLogger("vidpost")


class OptimConfig(Config):
    learning_rate: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to learning_rate")
    schedule: Literal["constant", "cosine"] = Field("constant", description="after warm-up: constant or cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to learning_rate times this")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")

    def adamw(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.AdamW:
        """The AdamW these settings describe (a Loop's `learning_rate` then sets the rate of every step)."""
        return torch.optim.AdamW(params, lr=self.learning_rate, **self._constants())

    def restart(self, optimizer: torch.optim.Optimizer) -> None:
        """Make `optimizer` what `adamw` would build, in place: its moments dropped, its betas and weight decay
        these settings' (a resumed run's checkpoint may hold others); the rate stays the loop's."""
        optimizer.state.clear()
        for group in optimizer.param_groups:
            group.update(self._constants())

    def _constants(self) -> dict[str, Any]:
        return {"betas": self.betas, "weight_decay": self.weight_decay}


class ValidationConfig(Config):
    every_steps: int = Field(
        0, ge=0, description="generate and score validation videos every N steps (0: only at the end)"
    )
    prompts_file: str | None = Field(
        None, description="text file, one prompt per line; null: prompts of a ShapeWorld split (see `wording`)"
    )
    split: Literal["train", "eval", "heldout"] = Field("eval", description="ShapeWorld split of the prompts")
    wording: Literal["canonical", "terse"] = Field(
        "canonical",
        description="ShapeWorld prompts: canonical captions, or terse user prompts (for an enhancer) "
        "whose videos are scored against their intent",
    )
    n: int = Field(16, ge=1, description="number of validation prompts")
    world: WorldConfig = Field(
        default_factory=WorldConfig, description="canvas and object count of the ShapeWorld scenes the prompts describe"
    )
    seed: int = Field(0, description="seed of the ShapeWorld prompts; video j's noise is seeded seed + j")
    acceleration: AccelerationConfig = Field(
        default_factory=AccelerationConfig, description="feature cache, compile and attention backend of these videos"
    )
    enhancer: str | None = Field(
        None, description="prompt enhancer that rewrites the prompts first; videos are still scored against the prompts"
    )


class RemoteRewardConfig(Config):
    url: str = Field(..., description="base URL of a reward server (docs/reward_protocol.md)")
    rewards: list[str] = Field(..., min_length=1, description="reward names the server provides")
    timeout_s: float = Field(60.0, gt=0, description="seconds to wait for one request")
    retries: int = Field(2, ge=0, description="retries after a failed request")
    token_env: str | None = Field(
        None, description="environment variable holding the server's bearer token (the token is never saved)"
    )


class RewardConfig(Config):
    weights: dict[str, float] = Field(default_factory=lambda: {"total": 1.0}, description="reward name -> weight")
    remote: list[RemoteRewardConfig] = Field(default_factory=list, description="reward servers to register")


class CheckpointConfig(Config):
    every_steps: int = Field(100, ge=1, description="write a checkpoint every N steps (and at the end)")
    keep_last: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted")


class LogConfig(Config):
    every_steps: int = Field(10, ge=1, description="write training metrics every N steps")


def register_rewards(cfg: RewardConfig) -> None:
    """Register the reward servers and check that every weighted reward exists, before any work is done."""
    for server in cfg.remote:
        register_remote(
            server.url, server.rewards, timeout_s=server.timeout_s, retries=server.retries, token_env=server.token_env
        )
    check_reward_names(list(cfg.weights))


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed (adjacent steps get unrelated streams)."""
    return int(
        np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def make_ema(params: dict[str, torch.nn.Parameter], decay: float):
    """diffusers' EMAModel of the trained parameters, or None when decay is 0 (EMA off)."""
    if decay <= 0:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(list(params.values()), decay=decay)


def ema_checkpointed(params: dict[str, torch.nn.Parameter], ema) -> dict[str, torch.Tensor]:
    """What a checkpoint holds besides the optimizer: the trained weights and, with EMA, its shadow weights."""
    if ema is None:
        return dict(params)
    return {**params, **{f"ema.{name}": shadow for name, shadow in zip(params, ema.shadow_params, strict=True)}}


@contextmanager
def ema_weights(ema, params: dict[str, torch.nn.Parameter]):
    """Evaluate and save with the EMA weights (when EMA is on), then put the trained weights back."""
    if ema is None:
        yield
        return
    trained = [p.detach().clone() for p in params.values()]  # on the device, sharded like the parameters
    ema.copy_to(params.values())
    try:
        yield
    finally:
        with torch.no_grad():
            for p, saved in zip(params.values(), trained, strict=True):
                p.copy_(saved)


def learning_rate(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of step `step` (1-based): linear warm-up, then constant or cosine."""
    if step <= cfg.warmup_steps:
        return cfg.learning_rate * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.learning_rate
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints after the current step and exits cleanly."""

    def __init__(self) -> None:
        self.raised: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.raised = signum
        log.warning("stopping after this step (checkpoint first); press Ctrl-C again to stop at once")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonfiniteStreak:
    """Counts the steps in a row whose update was skipped for a non-finite loss or gradient.

    One bad batch is skipped and forgotten; `limit` in a row means the run has diverged and skipping will not
    bring it back, so `record` stops the run with one line naming the last good checkpoint. While a streak runs
    (`length` > 0) recipes write no checkpoint: the weights themselves may be what turned the loss non-finite,
    so the latest checkpoint stays one from before the streak.
    """

    def __init__(self, limit: int, checkpoints: Path, unit: str = "step") -> None:
        self.limit, self.checkpoints, self.unit = limit, Path(checkpoints), unit
        self.length = 0

    def record(self, step: int, finite: bool) -> None:
        self.length = 0 if finite else self.length + 1
        if self.length < self.limit:
            return
        last = latest_checkpoint(self.checkpoints)
        kept = f"the last good checkpoint is {last}" if last is not None else "no checkpoint was written before them"
        raise VidpostError(
            f"{self.unit} {step}: {self.length} {self.unit}s in a row had a non-finite loss or gradient "
            f"(limit train.max_consecutive_nonfinite = {self.limit}); stopped, {kept}; "
            "lower the learning rate or check the data"
        )


# Keys a run may change when it resumes: they shape the steps still to come, not the ones taken. A run
# stopped by a non-finite streak resumes at a lower learning rate; a finished run is extended by more steps.
RESUMABLE_KEYS = (
    "train.steps",
    "train.max_consecutive_nonfinite",
    "optim.",
    "validation.",
    "checkpoint.",
    "log.",
)
CONFIG_CHANGES = "config_changes.jsonl"  # under logs/: every accepted change, with the step it applies from


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """Every (dotted key, old value, new value) that differs between two config dumps."""
    changes = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append((f"{prefix}{key}", a, b))
    return changes


def _started(out: Path) -> int | None:
    """The step a run in `out` has reached (its newest checkpoint; a finished run without one: -1), or None."""
    steps = [int(path.name.split("_")[-1]) for path in run_checkpoints(out)]  # a pipeline's stages too
    if steps:
        return max(steps)
    return -1 if finished_model(out) is not None else None


def prepare_run_dir(cfg: Config, out: Path, may_change=None) -> None:
    """Create the run directory with the resolved config, or take up the run it holds.

    A run that has not taken a step yet (no checkpoint, no final model) takes any config. One that has may
    change only RESUMABLE_KEYS; each accepted change is written to logs/config_changes.jsonl, and a finished
    run given more steps (train.steps) loses its final folder, which the extended run writes again.
    `may_change(key, old, new)` accepts more (a pipeline: the stages not yet run). Any other change is refused
    with the offending keys.
    """
    saved = out / "config.yaml"
    if saved.is_file():
        try:
            previous = load_config(type(cfg), saved).model_dump()
        except VidpostError as error:
            raise VidpostError(
                f"{out} holds a run whose config no longer loads ({error}); correct {saved} to resume it, "
                "or choose another --out"
            ) from None
        changes = config_changes(previous, cfg.model_dump())
        step = _started(out) if changes else None
        if step is not None:
            refused = [
                c
                for c in changes
                if not c[0].startswith(RESUMABLE_KEYS) and not (may_change is not None and may_change(*c))
            ]
            if refused:
                diff = "; ".join(f"{key}: {a!r} there, {b!r} now" for key, a, b in refused)
                raise VidpostError(
                    f"{out} holds a run with another config ({diff}); only "
                    f"{', '.join(RESUMABLE_KEYS)} may change when a run resumes: choose another --out"
                )
            _accept_changes(cfg, out, changes, step)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)


def _accept_changes(cfg: Config, out: Path, changes: list[tuple[str, object, object]], step: int) -> None:
    steps = dict((key, b) for key, _, b in changes).get("train.steps")
    if isinstance(steps, int) and step >= 0 and steps < step:  # train.steps is an int when given
        raise VidpostError(f"train.steps {steps} is below the {step} steps {out} has already run")
    if not dist.is_main():
        return
    for key, a, b in changes:
        log.warning("%s: %s changes from %r to %r from step %d on", out, key, a, b, max(step, 0))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    with open(out / "logs" / CONFIG_CHANGES, "a") as f:
        f.write(json.dumps({"from_step": max(step, 0), "changes": {k: [a, b] for k, a, b in changes}}) + "\n")
    final = finished_model(out)
    if steps is not None and final is not None:  # extended: the final folder is written again at the new end
        shutil.rmtree(final)


LOCK_NAME = ".lock"  # in a run directory: the PID of the process that runs it


def lock_run_dir(out: Path) -> None:
    """Hold `out` for this process until it exits; refuse it while another live process holds it.

    Two processes on one run directory would delete each other's temporary folders and checkpoints. A lock
    whose process is gone (killed, crashed) is stale and taken over.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock, me = out / LOCK_NAME, os.getpid()
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        holder = _lock_holder(lock)
        if holder is not None and holder != me and _alive(holder):
            raise VidpostError(
                f"{out} is in use by process {holder} (lock file {lock}); wait for it to end or stop "
                "it, or choose another --out"
            ) from None
        if holder != me:
            log.warning("%s: taking over the lock of process %s, which is gone", out, holder)
        lock.write_text(str(me))
    else:
        with os.fdopen(fd, "w") as f:
            f.write(str(me))
    atexit.register(_unlock, lock, me)


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _unlock(lock: Path, me: int) -> None:
    if _lock_holder(lock) == me:
        lock.unlink(missing_ok=True)


def start_run(cfg: Config, out: Path, finished=None) -> Path | None:
    """Lock `out` (rank 0), prepare it (rank 0 first; the others find it) and return its final output if the
    run is already done.

    finished(out) -> the final output or None; default `finished_model` (model/ or lora/ with a card).
    """
    with dist.main_first():
        if dist.is_main():
            lock_run_dir(out)
        prepare_run_dir(cfg, out)
    final = (finished or finished_model)(out)
    if final is not None:
        log.info("%s is finished (%s exists); nothing to do", out, final)
    return final


def validate(
    model,
    prompts: list[str],
    scorable: bool,
    sampling: SamplingConfig,
    video: VideoConfig,
    seed: int,
    precision: str,
    out_dir: Path,
    prefix: str = VAL,
    acceleration: AccelerationConfig | None = None,
    used: list[str] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Generate the validation videos into out_dir (a dataset folder); score them if the prompts are ShapeWorld's.

    `used`: what the model is given instead of each prompt (an enhancer's rewrites, see `rewrite_prompts`); the
    videos are still scored against the prompts, and each clip keeps its rewrite as `prompt_used`.

    Deterministic: the all-ODE path from noise seeded seed + j, so every validation of a run (and of every
    stage) sees the same prompts and the same starting noise (a feature cache in `acceleration` changes the videos).
    `progress`: a short bar of its own (rank 0), cleared when done, so the training bar is not left stalled.
    Distributed: every rank calls this; each samples its share of the prompts with the full weights, and rank 0
    writes and scores them all (the other ranks return {}).
    """
    rewritten = used is not None
    texts = used if used is not None else prompts
    share = dist.share(len(prompts))
    with dist.unsharded(model.transformer):
        part = (
            generate(
                model,
                texts[share],
                sampling,
                video,
                seed=seed + share.start,
                precision=precision,
                progress=progress and dist.is_main(),
                acceleration=acceleration,
                desc=prefix,
                leave=False,
            ).videos
            if share.stop > share.start
            else None
        )
    parts = dist.gather_objects(part)
    if not dist.is_main():
        return {}
    assert parts is not None  # rank 0 gathers every rank's part
    videos = np.concatenate([p for p in parts if p is not None])
    with DatasetWriter(out_dir, overwrite=True) as writer:
        for frames, prompt, text in zip(videos, prompts, texts, strict=True):
            writer.add(frames, prompt, **({"prompt_used": text} if rewritten else {}))
    scores = score_videos(videos, prompts) if scorable else {}
    return {f"{prefix}/{name}": value for name, value in scores.items()}


def finished_model(out: Path) -> Path | None:
    """The final model/ or lora/ of a finished run in `out` (one with a model card), else None."""
    for final in (out / MODEL_DIR, out / LORA_DIR):
        if (final / "vidpost.json").is_file():
            return final
    return None


def save_final(
    model: WanVideoModel, model_cfg: ModelConfig, sampling: SamplingConfig, video: VideoConfig, out: Path
) -> Path:
    """Write model/ (diffusers layout) or lora/ atomically, with the model card (`sampling` recommended).

    `progress`: a short bar of its own (rank 0), cleared when done, so the training bar is not left stalled.
    Distributed: every rank calls this; the sharded weights are gathered, whole, to rank 0, which loads them
    into an unsharded copy of the model (built again from `model_cfg`) and writes it.
    """
    name = LORA_DIR if model.lora_config is not None else MODEL_DIR
    final, tmp = out / name, out / f".{name}.tmp"
    if dist.is_distributed():
        trained = (
            model.transformer.state_dict()
            if model.lora_config is None
            else {n: p for n, p in model.transformer.named_parameters() if p.requires_grad}
        )
        weights = dist.full_tensors(trained)  # {} on ranks other than 0
        if not dist.is_main():
            return final
        model = WanVideoModel.from_config(model_cfg)
        missing, unexpected = model.transformer.load_state_dict(weights, strict=False)
        trained_missing = missing if model.lora_config is None else [k for k in missing if "lora_" in k]
        if unexpected or trained_missing:
            raise VidpostError(
                f"the rebuilt model does not match the trained one ({(trained_missing + unexpected)[:3]})"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    if model.lora_config is not None:
        model.save_lora(tmp)
    else:
        model.save(tmp)
    card: dict[str, Any] = {
        "codec": model_cfg.codec,
        "max_sequence_length": model_cfg.max_sequence_length,
        "prediction": model.prediction,
        "video": video.model_dump(),
        "sampling": sampling.model_dump(),
    }
    if model.prediction == "preconditioned":  # a velocity model has no use for a data std
        card["sigma_data"] = model.sigma_data
    if model.lora_config is not None:
        assert model_cfg.path is not None  # adapters are trained on a base model folder
        card["base"] = str(Path(model_cfg.path).resolve()) if Path(model_cfg.path).exists() else model_cfg.path
    write_card(tmp, card)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final
