"""The training loop every recipe runs, so what must hold at every step holds in one place.

A recipe builds its model, data and optimizer, then hands a `Loop` what is its own:

    loop = Loop(out=out, steps=steps, params=params, optimizer=optimizer, validation=evaluate, **cadence(cfg), ...)
    start = loop.resume(opening)      # the newest checkpoint loaded; rank 0's run log opened at its step
    final = loop.run(step, stop=StopFlag(), finish=save_final, summary=counts, stop_after=stop_after)

`step(n) -> (metrics, finite)` is one optimizer step (GRPO: one iteration), n counted from 1: it draws its
randomness from (seed, n), skips its update when the loss or gradient is not finite, and says which. The loop
owns the rest, the same for every recipe:

    before step n      its learning rate (`learning_rate(n)`), on every parameter group
    after step n       the non-finite count and streak (`NonfiniteStreak` stops a diverged run); the EMA's step;
                       the run log every `log_every` steps (`averaged` series over the steps since the last row,
                       the others as the latest step logged them); validation every `validate_every` steps, at
                       `validate_at` and at the last step; a checkpoint every `checkpoint_every` steps, at the
                       last step and at a stop, none while a non-finite streak runs
    a stop             SIGINT/SIGTERM on any rank, `stop_after`, or `stop_after_seconds` of steps (validation not
                       counted; the sum is checkpointed, so it spans resumes): every rank stops after the same step,
                       which is checkpointed; the log is closed and `run` returns None; the rerun resumes after it
    the end            `finish()` writes the final model; summary.json holds `summary()` and the last logged value
                       of every `summary_series` metric, read from the run log, so a run resumed at its last step
                       (nothing left to run) reports its final validation too
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from tqdm import tqdm

from vidpost import dist
from vidpost.atomic import atomic_path
from vidpost.checkpoint import full_training_state, latest_checkpoint, load_latest_checkpoint, save_checkpoint
from vidpost.metric_names import TRAIN, series
from vidpost.recipes.common import NonfiniteStreak, StopFlag
from vidpost.runlog import METRICS_NAME, RunLog, read_metrics

log = logging.getLogger("vidpost")

Metrics = dict[str, float]


class Cadence(TypedDict):
    """The Loop settings that every recipe's config names alike (its checkpoint, log, validation and train)."""

    checkpoint_every: int
    keep_last: int
    log_every: int
    validate_every: int
    max_consecutive_nonfinite: int


def cadence(cfg: Any, log_every: int | None = None) -> Cadence:
    """A recipe config's Cadence; `log_every` in place of its log section's (a stage whose steps are few)."""
    return Cadence(
        checkpoint_every=cfg.checkpoint.every_steps,
        keep_last=cfg.checkpoint.keep_last,
        log_every=cfg.log.every_steps if log_every is None else log_every,
        validate_every=cfg.validation.every_steps,
        max_consecutive_nonfinite=cfg.train.max_consecutive_nonfinite,
    )


@dataclass(eq=False, kw_only=True)
class Loop:
    """One run's loop: these settings, then `resume`, then `run` (see the module's docstring)."""

    out: Path  # the run directory: logs/ and summary.json
    steps: int  # the last step
    params: dict[str, torch.nn.Parameter]  # the trained parameters, which the EMA follows
    optimizer: torch.optim.Optimizer
    checkpoints: Path  # the checkpoints' folder
    checkpointed: dict[str, torch.Tensor]  # what a checkpoint holds besides the optimizer
    validation: Callable[[int], Metrics]  # after step n (0: before the first); {} on ranks other than 0
    summary_series: str  # prefix of the validation series summary.json reports
    checkpoint_every: int
    keep_last: int  # checkpoints kept
    log_every: int
    validate_every: int  # 0: only at the last step (and at validate_at)
    max_consecutive_nonfinite: int
    progress: bool  # show the bar (rank 0)
    desc: str  # the bar's
    postfix: Callable[[Metrics], dict[str, Any]]  # the bar's postfix from a step's metrics
    state: dict[str, Any] = field(default_factory=lambda: {"nonfinite_steps": 0})  # counters a checkpoint keeps
    learning_rate: Callable[[int], float] | None = None  # step n's; None: the optimizer's own, not logged
    ema: Any = None  # diffusers' EMAModel of params, or None
    group: str = TRAIN  # the series group of the loop's own metrics: lr, seconds_per_step, nonfinite_steps
    averaged: Collection[str] = ()  # series logged as their mean over the steps since the last row
    rates: Mapping[str, float] = field(default_factory=dict)  # series name -> units per step, logged per second
    timed: bool = True  # log GROUP/seconds_per_step
    validate_at: Collection[int] = ()  # steps validated besides the cadence and the last
    unit: str = "step"  # what messages call a step
    offset: int = 0  # the run log and stop_after count step n as offset + n (a stage after another)
    last_step_finishes: bool = False  # a stop raised during the last step is ignored: the run finishes

    def __post_init__(self) -> None:
        self.state.setdefault("train_seconds", 0.0)  # the steps' wall-clock (checkpoints of older runs lack it)
        self.nonfinite = NonfiniteStreak(self.max_consecutive_nonfinite, self.checkpoints, self.unit)
        self.start = 0  # the step resumed from
        self.resumed = False  # whether a checkpoint was found
        self.runlog: RunLog | None = None  # rank 0's, once `resume` opened it
        self.metrics: Metrics | None = None  # the latest validation's in this process

    def resume(self, opening: Mapping[str, float] | None = None) -> int:
        """Load the newest checkpoint (if any) and open rank 0's run log there, with `opening` as its first row
        (an enhancer's fallback counts); return the step resumed from (0: none)."""
        resumed = load_latest_checkpoint(self.checkpoints, self.checkpointed, self.optimizer)
        if resumed is not None:
            checkpoint, self.state = resumed
            self.start, self.resumed = self.state.pop("step"), True
            self.state.setdefault("train_seconds", 0.0)
            if self.ema is not None:
                self.ema.optimization_step = self.state["ema_steps"]
            log.info("resuming from %s (%s %d of %d)", checkpoint, self.unit, self.start, self.steps)
        if dist.is_main():
            self.runlog = RunLog(self.out, resume_step=self.offset + self.start)
            if opening:
                self.runlog.write(self.offset + self.start, opening)
        return self.start

    def validate(self, n: int) -> Metrics:
        """Validate after step n: log the metrics at n and print them."""
        metrics = self.metrics = self.validation(n)
        if self.runlog is not None:
            self.runlog.write(self.offset + n, metrics)
        if metrics:
            tqdm.write(f"{self.unit} {n}: " + ", ".join(f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in metrics.items()))
        return metrics

    def save(self, n: int) -> None:
        """Checkpoint step n (every rank calls this: sharded tensors are gathered; rank 0 writes)."""
        if self.nonfinite.length:  # keep the last good checkpoint the latest (see NonfiniteStreak)
            log.warning("%s %d: no checkpoint while %ss are non-finite", self.unit, n, self.unit)
            return
        weights, optimizer_state = full_training_state(self.checkpointed, self.optimizer)  # whole, on rank 0
        if dist.is_main():  # one writer: whole tensors, so any world size resumes from it
            save_checkpoint(self.checkpoints, n, weights, optimizer_state, self.state, self.keep_last)

    def run(
        self,
        step: Callable[[int], tuple[Metrics, bool]],
        *,
        stop: StopFlag,
        finish: Callable[[], Path],
        summary: Callable[[], dict[str, Any]],
        stop_after: int | None = None,
        stop_after_seconds: float | None = None,
        before: Callable[[], None] | None = None,
    ) -> Path | None:
        """Run the steps after `resume`'s; return finish()'s final output, or None if stopped early.

        stop: entered for the steps only, so a signal during the final save is not taken for a stop.
        stop_after: stop (as SIGINT would) once this step is done; tests use it to interrupt a run.
        stop_after_seconds: stop (as SIGINT would, after a validation) once the steps have taken this long, over
            all resumes: an equal wall-clock budget for runs compared with one another.
        before: run first, inside the stop's scope (a baseline validation that a signal must not cut short).
        """
        if stop_after_seconds is not None and self.state["train_seconds"] >= stop_after_seconds:
            warn_stopped(self.start, self.checkpoints, self.unit)  # resumed with its budget already spent
            if self.runlog is not None:
                self.runlog.close()
            return None
        bar = tqdm(total=self.steps, initial=self.start, desc=self.desc, unit=self.unit, disable=not self.progress)
        window: list[tuple[Metrics, float]] = []  # (metrics, seconds) of the steps since the last row
        with stop:
            if before is not None:
                before()
            for n in range(self.start + 1, self.steps + 1):
                tick = time.perf_counter()
                lr = None
                if self.learning_rate is not None:
                    lr = self.learning_rate(n)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                metrics, finite = step(n)
                if not finite:
                    self.state["nonfinite_steps"] += 1
                self.nonfinite.record(n, finite)  # raises after max_consecutive_nonfinite in a row
                if self.ema is not None:
                    self.ema.step(list(self.params.values()))
                    self.state["ema_steps"] = self.ema.optimization_step
                seconds = time.perf_counter() - tick
                self.state["train_seconds"] += seconds
                window.append((metrics, seconds))
                bar.update(1)
                bar.set_postfix(self.postfix(metrics))
                if n % self.log_every == 0 or n == self.steps:
                    if self.runlog is not None:
                        self.runlog.write(self.offset + n, self._row(window, lr))
                    window = []
                out_of_time = self._out_of_time(n, stop_after_seconds)  # every rank agrees
                cadenced = (self.validate_every and n % self.validate_every == 0) or n in self.validate_at
                if cadenced or n == self.steps or out_of_time:  # a run given a time budget ends measured
                    self.validate(n)
                stopping = out_of_time or self._stopping(n, stop, stop_after)  # every rank at the same step
                if n % self.checkpoint_every == 0 or n == self.steps or stopping:
                    self.save(n)
                if stopping:
                    bar.close()
                    if self.runlog is not None:  # rank 0, which wrote the checkpoint
                        self.runlog.close()  # flush TensorBoard: nothing logged is lost on a stop
                        warn_stopped(n, self.checkpoints, self.unit)
                    return None
        bar.close()
        final = finish()
        if self.runlog is not None:
            self.runlog.close()
            write_summary(self.out, summary(), self.summary_series)
        return final

    def _stopping(self, n: int, stop: StopFlag, stop_after: int | None) -> bool:
        if self.last_step_finishes and n == self.steps:
            return False
        return dist.any_rank(stop.raised is not None) or self.offset + n == stop_after

    def _out_of_time(self, n: int, stop_after_seconds: float | None) -> bool:
        if stop_after_seconds is None or n == self.steps:  # the last step finishes the run anyway
            return False
        return dist.any_rank(self.state["train_seconds"] >= stop_after_seconds)

    def _row(self, window: list[tuple[Metrics, float]], lr: float | None) -> Metrics:
        """The log row of the steps in `window`: `averaged` series as their mean, the others as the latest step's."""
        row = {
            name: float(np.mean([m[name] for m, _ in window if name in m])) if name in self.averaged else value
            for name, value in window[-1][0].items()
        }
        if lr is not None:
            row[series(self.group, "lr")] = lr
        if self.timed:
            seconds = float(np.mean([s for _, s in window]))
            row[series(self.group, "seconds_per_step")] = seconds
            row.update({name: per_step / seconds for name, per_step in self.rates.items()})
        row[series(self.group, "nonfinite_steps")] = self.state["nonfinite_steps"]
        return row


def warn_stopped(step: int, checkpoints: Path, unit: str = "step") -> None:
    log.warning(
        "stopped at %s %d; rerun the same command to resume from %s",
        unit,
        step,
        latest_checkpoint(checkpoints) or "the start",
    )


def write_summary(out: Path, counts: dict, prefix: str) -> None:
    """summary.json, written atomically: the run's counts and the last logged value of every `prefix` metric.

    Read from the run log, so a run resumed at its last step (nothing left to evaluate) still reports them.
    """
    last: dict = {}
    if (out / "logs" / METRICS_NAME).is_file():
        for row in read_metrics(out):
            last.update({k: v for k, v in row.items() if k.startswith(prefix)})
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({**counts, **last}, indent=1) + "\n")
