"""Faster sampling: a feature cache, compiled transformer blocks and an attention backend, for inference only.

    cfg = AccelerationConfig(cache=CacheConfig(name="first_block", threshold=0.05), compile=True)
    with accelerated(model, cfg, steps=sampling.steps) as acc:
        if acc.needs_calibration:                    # MagCache with `calibrate: true`
            acc.calibrate(run_one_video)             # run_one_video() samples once and returns its NFE
        for batch in batches:
            acc.new_run()                            # cache state belongs to one pass over the grid
            velocity = GuidedVelocity(model, c, u, w, contexts=acc.context, batch_cfg=acc.batch_cfg)
            ...
    # here the transformer has no hooks or compiled blocks, and the attention backend is the previous one

The caches and the attention backend are diffusers' own (enable_cache/disable_cache, the attention_backend
context) on the unmodified transformer, and compile is torch.compile of the blocks (see _compiled_modules),
so the model code knows nothing of it. How each cache meets our sampler, whose GuidedVelocity makes the cond
and uncond passes separately as WanPipeline does:

- first_block: block 0 always runs; when its residual moved by less than `threshold` (mean |Δ| relative to
  mean |residual|) since the last full pass of the same branch, the other blocks are replaced by that pass's
  residual. The test is over the whole batch, so with this cache a video can depend on its batch mates.
- mag: skips all blocks but the first on a schedule of accumulated magnitude-ratio error. The ratios are
  model- and grid-specific: given (interpolated to the step count), or measured on one calibration video.
- taylorseer: every block's attn1/attn2/ffn outputs are computed on some steps and extrapolated by a Taylor
  series in the step index on the others (`lite`: only the output projection is extrapolated, blocks skipped).
  Its default module patterns match nothing in Wan (they expect names ending in "attn"), so Wan's are given.
- pab (Pyramid Attention Broadcast): self-attention outputs are reused for `skip_range - 1` passes while the
  timestep is inside the window. Its hook keeps one state for every call rather than one per cache context, so
  with guidance the cond and uncond passes are batched into one call (otherwise uncond would reuse cond's).

The first three keep their state per branch (diffusers' cache_context "cond"/"uncond") and count steps
themselves, so `new_run` must reset them before every batch; NFE still counts every transformer call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Literal

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    MagCacheConfig,
    PyramidAttentionBroadcastConfig,
    TaylorSeerCacheConfig,
)
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend
from pydantic import Field, field_validator, model_validator

from vidpost.config import Config
from vidpost.errors import VidpostError, first_line

ATTENTION_BACKENDS = tuple(name.value for name in AttentionBackendName)
# The keys each cache takes, with their defaults (diffusers' own). A key of another cache is an error.
CACHE_KEYS: dict[str, dict] = {
    "first_block": {"threshold": 0.05},
    "mag": {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": None, "calibrate": False},
    "taylorseer": {
        "cache_interval": 5,
        "disable_cache_before_step": 3,
        "disable_cache_after_step": None,
        "max_order": 1,
        "lite": False,
    },
    "pab": {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (100.0, 800.0)},
}
_HOOK_ATTRIBUTES = ("forward", "_diffusers_hook")
# attn1 (self), attn2 (cross) and the MLP of every Wan block, for TaylorSeer (matched with re.fullmatch)
_WAN_TAYLORSEER_MODULES = [r"blocks\.\d+\.(attn1|attn2|ffn)"]


class CacheConfig(Config):
    name: Literal["first_block", "mag", "taylorseer", "pab"] = Field(
        description="first_block | mag | taylorseer | pab; unset keys take that cache's defaults"
    )
    threshold: float | None = Field(
        None,
        ge=0,
        description="first_block: relative change of block 0's residual to recompute (0.05); mag: error budget (0.06)",
    )
    max_skip_steps: int | None = Field(None, ge=1, description="mag: most consecutive skipped steps (3)")
    retention_ratio: float | None = Field(
        None, ge=0, le=1, description="mag: leading fraction of steps never skipped (0.2)"
    )
    mag_ratios: list[float] | None = Field(
        None, description="mag: magnitude ratio per step, from a calibration of this model"
    )
    calibrate: bool | None = Field(None, description="mag: measure the ratios on one extra video first (False)")
    cache_interval: int | None = Field(None, ge=1, description="taylorseer: steps between full computations (5)")
    disable_cache_before_step: int | None = Field(None, ge=0, description="taylorseer: steps always computed first (3)")
    disable_cache_after_step: int | None = Field(
        None, ge=0, description="taylorseer: compute every step from this one on"
    )
    max_order: int | None = Field(None, ge=0, description="taylorseer: order of the Taylor extrapolation (1)")
    lite: bool | None = Field(
        None, description="taylorseer: extrapolate only the output projection, skip all blocks (False)"
    )
    spatial_attention_block_skip_range: int | None = Field(
        None, ge=2, description="pab: self-attention is computed every N-th pass and reused in between (2)"
    )
    spatial_attention_timestep_skip_range: tuple[float, float] | None = Field(
        None, description="pab: (low, high) timesteps (sigma x 1000) where reuse is allowed ((100, 800))"
    )

    @model_validator(mode="before")
    @classmethod
    def _the_named_caches_keys(cls, data):
        if not isinstance(data, dict) or data.get("name") not in CACHE_KEYS:
            return data  # pydantic names a missing or unknown cache
        own = CACHE_KEYS[data["name"]]
        foreign = [
            k for k, v in data.items() if k != "name" and k not in own and k in cls.model_fields and v is not None
        ]
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: not a key of cache {data['name']!r} (its keys: {', '.join(own)})")
        return {**own, **{k: v for k, v in data.items() if v is not None}}

    @model_validator(mode="after")
    def _mag_needs_ratios(self):
        if self.name == "mag" and (self.mag_ratios is None) == (not self.calibrate):
            raise ValueError("cache 'mag' needs either mag_ratios (from an earlier calibration) or calibrate: true")
        return self


class AccelerationConfig(Config):
    cache: CacheConfig | None = Field(None, description="feature cache that reuses work across steps; null: none")
    compile: bool = Field(False, description="torch.compile every transformer block (the first batch pays the compile)")
    attention_backend: str | None = Field(
        None, description="diffusers attention backend, e.g. flash, sage, _native_cudnn; null: torch SDPA"
    )

    @field_validator("attention_backend")
    @classmethod
    def _known_backend(cls, name: str | None) -> str | None:
        if name is not None and name not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {name!r} (known: {', '.join(ATTENTION_BACKENDS)})")
        return name


class Acceleration:
    """What `accelerated` yields: a context for each transformer call, a reset per run, and what was used."""

    def __init__(self, model, cfg: AccelerationConfig, steps: int) -> None:
        self.model = model
        self.transformer = model.transformer
        self.cfg = cfg
        self.steps = steps
        self.mag_ratios: list[float] | None = cfg.cache.mag_ratios if cfg.cache is not None else None
        self.calibration_nfe = 0
        self._timestep: float | None = None  # of the transformer call under way; PAB reads it
        self._branch: str | None = None  # "cond" / "uncond" of that call; calibration reads it
        self._cache_enabled = False
        self._calibrating = False
        self._before = _hook_attributes(self.transformer)  # restored on exit, so the model is as it was

    @property
    def batch_cfg(self) -> bool:
        """Whether guidance must batch cond and uncond into one call (PAB's state is not kept per branch)."""
        return self.cfg.cache is not None and self.cfg.cache.name == "pab"

    @property
    def needs_calibration(self) -> bool:
        return self.cfg.cache is not None and self.cfg.cache.name == "mag" and self.mag_ratios is None

    def context(self, branch: str, sigma: torch.Tensor):
        """Wrap one transformer call: `branch` names the cache state it reads and writes; sigma (B,) its time."""
        if self.cfg.cache is None:
            return nullcontext()
        if not bool((sigma == sigma[0]).all()):
            raise VidpostError("feature caches need one sigma for the whole batch")
        self._timestep = float(sigma[0]) * self.model.num_train_timesteps
        self._branch = branch
        return self.transformer.cache_context(branch)

    def new_run(self) -> None:
        """Forget the previous run's cached features and step counters (diffusers' pipelines do this per call)."""
        if self.needs_calibration and not self._calibrating:
            raise VidpostError("MagCache: call calibrate() before sampling")
        if self._cache_enabled:
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks(recurse=True)

    def calibrate(self, run: Callable[[], int]) -> None:
        """Measure MagCache's ratios on one uncached run (`run()` samples and returns its NFE), then apply all.

        The ratio of step t is diffusers' calibration formula: mean over tokens of |r_t| / |r_{t-1}| for the
        residual r = (last block's output - first block's input), 1 at the first step; averaged over branches.
        """
        blocks = self.transformer.blocks
        residuals: dict[str, torch.Tensor] = {}
        ratios: dict[str, list[float]] = {}
        head_input: list[torch.Tensor] = []

        def keep_input(module, args):
            head_input[:] = [args[0]]

        def measure(module, args, output):
            residual = (output - head_input[0]).float()
            previous = residuals.get(self._branch)
            ratio = (
                1.0
                if previous is None
                else (torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(previous, dim=-1) + 1e-8)).mean().item()
            )
            ratios.setdefault(self._branch, []).append(ratio)
            residuals[self._branch] = residual

        handles = [blocks[0].register_forward_pre_hook(keep_input), blocks[-1].register_forward_hook(measure)]
        self._calibrating = True
        try:
            self.calibration_nfe = run()
        finally:
            self._calibrating = False
            for handle in handles:
                handle.remove()
        if any(len(r) != self.steps for r in ratios.values()) or not ratios:
            raise VidpostError(
                f"MagCache calibration saw {[len(r) for r in ratios.values()]} steps, expected {self.steps}"
            )
        self.mag_ratios = [sum(step) / len(step) for step in zip(*ratios.values(), strict=True)]
        self._apply()

    def report(self) -> dict:
        """The acceleration used, for sample.json: the config, plus measured MagCache ratios if calibrated."""
        out = self.cfg.model_dump(mode="json")
        if self.cfg.cache is not None:
            out["cache"] = self.cfg.cache.model_dump(mode="json", exclude_none=True)
            if self.cfg.cache.calibrate:
                out["cache"].update(mag_ratios=self.mag_ratios, calibration_nfe=self.calibration_nfe)
        return out

    def _apply(self) -> None:
        if self.cfg.compile:  # first, so that the cache hooks wrap compiled code (see _compiled_modules)
            for module in _compiled_modules(self.transformer, self.cfg.cache):
                module.forward = torch.compile(module.forward)
        if self.cfg.cache is not None:
            self.transformer.enable_cache(self._diffusers_cache_config())
            self._cache_enabled = True

    def _remove(self) -> None:
        if self._cache_enabled:
            self.transformer.disable_cache()
            self._cache_enabled = False
        # disable_cache leaves each hooked module an empty hook registry and its own forward as an instance
        # attribute, and compile left compiled forwards: put back exactly what was there before
        for module, attributes in self._before.items():
            for name in _HOOK_ATTRIBUTES:
                if name in attributes:
                    module.__dict__[name] = attributes[name]
                else:
                    module.__dict__.pop(name, None)

    def _diffusers_cache_config(self):
        c = self.cfg.cache
        if c.name == "first_block":
            return FirstBlockCacheConfig(threshold=c.threshold)
        if c.name == "mag":
            return MagCacheConfig(
                threshold=c.threshold,
                max_skip_steps=c.max_skip_steps,
                retention_ratio=c.retention_ratio,
                num_inference_steps=self.steps,
                mag_ratios=list(self.mag_ratios),
            )
        if c.name == "taylorseer":
            return TaylorSeerCacheConfig(
                cache_interval=c.cache_interval,
                disable_cache_before_step=c.disable_cache_before_step,
                disable_cache_after_step=c.disable_cache_after_step,
                max_order=c.max_order,
                use_lite_mode=c.lite,
                cache_identifiers=None if c.lite else _WAN_TAYLORSEER_MODULES,
            )
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=c.spatial_attention_block_skip_range,
            spatial_attention_timestep_skip_range=c.spatial_attention_timestep_skip_range,
            current_timestep_callback=lambda: self._timestep,
        )


def _compiled_modules(transformer, cache: CacheConfig | None) -> list[torch.nn.Module]:
    """The modules whose forward `compile` compiles: the ones the cache hooks wrap, else every block.

    A hook runs Python per call (step counters, a residual test); compiled under it (diffusers'
    compile_repeated_blocks compiles whole blocks, hooks included) dynamo recompiles for every block's hook
    objects and gives up after 8, leaving most of Wan's 30-40 blocks eager. Compiled below it, the hooks stay
    eager and every block shares one compiled graph.
    """
    pattern = r"blocks\.\d+"
    if cache is not None and cache.name == "taylorseer" and not cache.lite:
        pattern = r"blocks\.\d+\.(attn1|attn2|ffn)"
    elif cache is not None and cache.name == "pab":
        pattern = r"blocks\.\d+\.attn1"
    return [module for name, module in transformer.named_modules() if re.fullmatch(pattern, name)]


def _hook_attributes(transformer) -> dict[torch.nn.Module, dict]:
    """Per module, the instance attributes that diffusers hooks and compile set (the ones present now)."""
    return {m: {n: m.__dict__[n] for n in _HOOK_ATTRIBUTES if n in m.__dict__} for m in transformer.modules()}


@contextmanager
def accelerated(model, cfg: AccelerationConfig | None, steps: int) -> Iterator[Acceleration]:
    """Apply `cfg` to `model.transformer` for the block and remove it all after (see the module docstring).

    `steps` is the number of denoising steps of every run (MagCache schedules by step index).
    """
    acc = Acceleration(model, cfg or AccelerationConfig(), steps)
    if acc.transformer.is_cache_enabled:  # diffusers allows one cache at a time
        raise VidpostError("the transformer already has a diffusers cache enabled; disable it first")
    with ExitStack() as undo:
        if acc.cfg.attention_backend is not None:
            # diffusers' context sets the process-wide active backend and restores the previous one on exit
            # (set_attention_backend would change that global too, and reset_attention_backend leaves it changed)
            try:
                undo.enter_context(attention_backend(acc.cfg.attention_backend))
            except (ValueError, RuntimeError) as exc:
                raise VidpostError(
                    f"attention backend {acc.cfg.attention_backend!r} is not available here: {first_line(exc)}"
                ) from exc
        undo.callback(acc._remove)
        if not acc.needs_calibration:  # otherwise calibrate() applies the cache and compile once it has the ratios
            acc._apply()
        yield acc
