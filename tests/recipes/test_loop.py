"""The training loop every recipe runs, driven by a fake step on one parameter (no model): a raised stop flag
checkpoints and returns None; a non-finite streak writes no checkpoint and its limit names the last good one;
checkpoints, validation and log rows follow their cadence; a resumed run starts after its last checkpoint and ends
as an uninterrupted one; a run resumed at its last step still writes its summary; stop_after."""

import json
import logging
import signal

import pytest
import torch

from vidpost.checkpoint import list_checkpoints
from vidpost.errors import VidpostError
from vidpost.recipes.common import StopFlag, ema_checkpointed, make_ema
from vidpost.recipes.loop import Loop
from vidpost.runlog import read_metrics


class Run:
    """A loop whose step n moves one weight by -n (SGD, lr 1, or the schedule's), recording what it saw."""

    def __init__(self, out, steps=5, nonfinite=(), signal_at=None, ema_decay=0.0, **settings):
        self.w = torch.nn.Parameter(torch.zeros(1))
        params = {"w": self.w}
        self.optimizer = torch.optim.SGD([self.w], lr=1.0)
        self.ema = make_ema(params, ema_decay)
        self.nonfinite, self.signal_at = set(nonfinite), signal_at
        self.ran, self.lrs, self.finished = [], [], False
        self.loop = Loop(
            out=out,
            steps=steps,
            params=params,
            optimizer=self.optimizer,
            checkpoints=out / "checkpoints",
            checkpointed=ema_checkpointed(params, self.ema),
            validation=lambda n: {"val/score": float(n)},
            summary_series="val/",
            checkpoint_every=settings.pop("checkpoint_every", 2),
            keep_last=10,
            log_every=settings.pop("log_every", 1),
            validate_every=settings.pop("validate_every", 0),
            max_consecutive_nonfinite=settings.pop("max_consecutive_nonfinite", 3),
            progress=False,
            desc="test",
            postfix=lambda metrics: {"loss": metrics["train/loss"]},
            state={"nonfinite_steps": 0, "ema_steps": 0},
            ema=self.ema,
            **settings,
        )

    def step(self, n):
        self.ran.append(n)
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        if n == self.signal_at:
            signal.raise_signal(signal.SIGTERM)  # as `kill` would, mid-step
        finite = n not in self.nonfinite
        if finite:
            self.w.grad = torch.full((1,), float(n))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/loss": float(n), "train/step": n}, finite

    def finish(self):
        self.finished = True
        return self.loop.out / "final"

    def __call__(self, stop_after=None, before=None, stop_after_seconds=None):
        self.loop.resume()
        return self.loop.run(
            self.step,
            stop=StopFlag(),
            finish=self.finish,
            summary=lambda: {"steps": self.loop.steps, **self.loop.state},
            stop_after=stop_after,
            stop_after_seconds=stop_after_seconds,
            before=before,
        )


def _checkpoints(out):
    return [int(p.name.split("_")[1]) for p in list_checkpoints(out / "checkpoints")]


def _rows(out, key):
    return [r for r in read_metrics(out) if key in r]


def test_a_raised_stop_flag_checkpoints_that_step_and_returns_none(tmp_path, caplog):
    handler = signal.getsignal(signal.SIGTERM)
    run = Run(tmp_path, checkpoint_every=10, signal_at=2)
    with caplog.at_level(logging.WARNING, logger="vidpost"):
        assert run() is None
    assert run.ran == [2 - 1, 2] and _checkpoints(tmp_path) == [2]  # off the cadence: the stop's checkpoint
    assert not run.finished and not (tmp_path / "summary.json").exists()
    assert f"stopped at step 2; rerun the same command to resume from {tmp_path / 'checkpoints'}" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == handler  # the loop's handler is gone once it returns
    rerun = Run(tmp_path, checkpoint_every=10)
    assert rerun() == tmp_path / "final" and rerun.ran == [3, 4, 5]


def test_a_nonfinite_streak_writes_no_checkpoint_and_its_limit_names_the_last_good_one(tmp_path):
    run = Run(tmp_path, steps=8, nonfinite={3, 4, 5})
    with pytest.raises(VidpostError) as error:
        run()
    assert str(error.value).startswith(
        "step 5: 3 steps in a row had a non-finite loss or gradient (limit train.max_consecutive_nonfinite = 3); "
        f"stopped, the last good checkpoint is {tmp_path / 'checkpoints' / 'step_000002'};"
    )
    assert _checkpoints(tmp_path) == [2]  # none at step 4, inside the streak


def test_one_nonfinite_step_is_counted_logged_and_forgotten(tmp_path):
    run = Run(tmp_path, nonfinite={3})
    assert run() == tmp_path / "final"
    assert _checkpoints(tmp_path) == [2, 4, 5]  # step 4 is finite again: the streak is over
    assert [r["train/nonfinite_steps"] for r in _rows(tmp_path, "train/loss")] == [0, 0, 1, 1, 1]
    assert run.w.item() == -(1 + 2 + 4 + 5)  # step 3's update was skipped
    assert json.loads((tmp_path / "summary.json").read_text())["nonfinite_steps"] == 1


def test_checkpoints_validations_and_log_rows_follow_their_cadence(tmp_path):
    run = Run(
        tmp_path,
        checkpoint_every=2,
        log_every=2,
        validate_every=2,
        validate_at={1},
        averaged=("train/loss",),
        learning_rate=lambda n: 0.1 * n,
    )
    assert run() == tmp_path / "final"
    assert _checkpoints(tmp_path) == [2, 4, 5]  # every 2 steps and the last
    assert [r["step"] for r in _rows(tmp_path, "val/score")] == [1, 2, 4, 5]
    rows = _rows(tmp_path, "train/loss")
    assert [r["step"] for r in rows] == [2, 4, 5]
    assert [r["train/loss"] for r in rows] == [1.5, 3.5, 5.0]  # averaged over the steps since the last row
    assert [r["train/step"] for r in rows] == [2, 4, 5]  # not averaged: the latest step's
    assert run.lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])  # set before each step
    assert [r["train/lr"] for r in rows] == pytest.approx([0.2, 0.4, 0.5])  # the latest step's, not a mean
    assert all(r["train/seconds_per_step"] >= 0 for r in rows)


def test_a_resumed_run_starts_after_its_last_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    straight = Run(tmp_path / "straight", ema_decay=0.5)
    straight()
    cut = Run(tmp_path / "cut", ema_decay=0.5)
    assert cut(stop_after=3) is None
    assert _checkpoints(tmp_path / "cut") == [2, 3]
    resumed = Run(tmp_path / "cut", ema_decay=0.5)
    assert resumed() == tmp_path / "cut" / "final"
    assert resumed.loop.start == 3 and resumed.ran == [4, 5]
    assert torch.equal(resumed.w, straight.w)
    shadows = [run.ema.shadow_params[0] for run in (straight, resumed)]
    assert torch.equal(*shadows) and not torch.equal(shadows[0], straight.w)  # the EMA, resumed with its count
    assert [r["step"] for r in _rows(tmp_path / "cut", "train/loss")] == [1, 2, 3, 4, 5]  # each step once


def test_a_run_resumed_at_its_last_step_still_writes_its_summary(tmp_path):
    assert Run(tmp_path)(stop_after=5) is None  # checkpointed at the last step, stopped before the end
    assert not (tmp_path / "summary.json").exists()
    rerun = Run(tmp_path)
    assert rerun() == tmp_path / "final"
    assert rerun.ran == [] and rerun.finished  # nothing left to run, but the final output is written
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary.pop("train_seconds") > 0  # the steps' wall-clock, kept in the checkpoint
    assert summary == {"steps": 5, "nonfinite_steps": 0, "ema_steps": 0, "val/score": 5.0}  # from the log


def test_stop_after_counts_from_the_offset_and_a_stop_during_the_last_step_can_be_ignored(tmp_path):
    run = Run(tmp_path / "offset", offset=10)
    assert run(stop_after=12) is None and run.ran == [1, 2]
    assert [r["step"] for r in _rows(tmp_path / "offset", "train/loss")] == [11, 12]
    finishing = Run(tmp_path / "last", last_step_finishes=True, signal_at=5)
    assert finishing(stop_after=5) == tmp_path / "last" / "final" and finishing.finished


def test_before_runs_first_and_a_signal_during_it_stops_after_the_first_step(tmp_path):
    run = Run(tmp_path)

    def baseline():
        run.loop.validate(0)
        signal.raise_signal(signal.SIGINT)

    assert run(before=baseline) is None
    assert run.ran == [1] and _checkpoints(tmp_path) == [1]
    assert [r["step"] for r in _rows(tmp_path, "val/score")] == [0]


def test_stop_after_seconds_counts_the_steps_time_over_resumes(tmp_path, monkeypatch):
    clock = iter(range(10_000))  # each reading one second later: a step (two readings) takes one second
    monkeypatch.setattr("vidpost.recipes.loop.time.perf_counter", lambda: float(next(clock)))
    run = Run(tmp_path, steps=8)
    assert run(stop_after_seconds=2.5) is None and run.ran == [1, 2, 3]  # 3 s spent after step 3
    assert _checkpoints(tmp_path)[-1] == 3
    assert [r["step"] for r in _rows(tmp_path, "val/score")] == [3]  # validated where the budget ran out
    again = Run(tmp_path, steps=8)
    assert again(stop_after_seconds=2.5) is None and again.ran == []  # resumed with the budget spent: no step
    more = Run(tmp_path, steps=8)
    assert more(stop_after_seconds=5.5) is None and more.ran == [4, 5, 6]  # the sum spans the resumes
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    assert json.loads((newest / "state.json").read_text())["train_seconds"] == 6.0
