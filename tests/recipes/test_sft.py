"""The SFT / pretraining recipe on a tiny ShapeWorld: resume is exact (also after a real SIGTERM), a run of
non-finite steps stops with its last good checkpoint, micro-batching is invariant, outputs load."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from vidpost.checkpoint import list_checkpoints
from vidpost.config import load_config, save_config
from vidpost.errors import VidpostError
from vidpost.recipes import sft
from vidpost.recipes.common import OptimConfig, learning_rate
from vidpost.recipes.sft import SFTConfig, batch_indices, pretrain, train
from vidpost.runlog import read_metrics

TINY = [
    "data.shapeworld.n=12",
    "data.shapeworld.world.frames=3",
    "data.shapeworld.world.height=16",
    "data.shapeworld.world.width=16",
    "data.shapeworld.world.max_objects=1",
    "train.steps=4",
    "train.batch_size=4",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "optim.warmup_steps=1",
    "sampling.steps=2",
    "sampling.guidance=2.0",
    "validation.n=2",
    "checkpoint.every_steps=2",
    "log.every_steps=1",
]


def _config(*overrides, from_scratch=True):
    model = ["model.tiny.patch_size=[1,4,4]"] if from_scratch else []
    return load_config(SFTConfig, None, ["data.shapeworld.style=curated", *TINY, *model, *overrides])


def _weights(run_dir):
    return load_file(run_dir / "model" / "transformer" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train(_config(), out, progress=False) == out / "model"
    return out


def test_a_killed_and_resumed_run_ends_with_the_same_weights(finished_run, tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=3) is None
    assert (tmp_path / "checkpoints" / "step_000003" / "state.json").is_file()
    assert not (tmp_path / "model").exists()
    assert train(_config(), tmp_path, progress=False) == tmp_path / "model"
    a, b = _weights(finished_run), _weights(tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the log reads as one run: each step once
    steps = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert steps == [1, 2, 3, 4]


# `vidpost sft ...` in a child process whose step 1 waits, once it has begun, for the test's SIGTERM: the signal
# then always lands mid-run, however slow the machine (the tiny run would otherwise race it to the end).
SIGTERM_CHILD = """
import sys, time
from pathlib import Path
from vidpost import cli
from vidpost.recipes import sft

ready, flags, real_loss = Path(sys.argv[1]), [], sft.training_loss

class SeenStopFlag(sft.StopFlag):
    def __enter__(self):
        flags.append(self)
        return super().__enter__()

def training_loss(*args):
    losses = real_loss(*args)
    if not ready.exists():
        ready.touch()
        deadline = time.monotonic() + 600
        while flags[0].raised is None and time.monotonic() < deadline:
            time.sleep(0.01)
    return losses

sft.StopFlag, sft.training_loss = SeenStopFlag, training_loss
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigterm_checkpoints_and_exits_and_the_rerun_resumes_to_the_same_weights(finished_run, tmp_path):
    config, out, ready = tmp_path / "sft.yaml", tmp_path / "run", tmp_path / "ready"
    save_config(_config(), config)
    with open(tmp_path / "stderr", "w+") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", SIGTERM_CHILD, str(ready), "sft", str(config), "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 600
            while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), "the child never reached step 1"
            child.send_signal(signal.SIGTERM)
            assert child.wait(timeout=600) == 130
        finally:
            child.kill()
            child.wait()
        stderr.seek(0)
        log = stderr.read()
    assert "stopped at step 1; rerun the same command to resume from" in log, log
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000001"]
    assert not (out / "model").exists()
    assert train(_config(), out, progress=False) == out / "model"
    a, b = _weights(finished_run), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(out) if "train/loss" in r] == [1, 2, 3, 4]


def test_a_run_of_nonfinite_steps_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss, calls = sft.training_loss, []

    def training_loss(model, *args):
        calls.append(1)
        if len(calls) == 3:  # step 3 makes a weight NaN: every later loss and gradient is non-finite
            with torch.no_grad():
                next(model.transformer.parameters()).fill_(float("nan"))
        return real_loss(model, *args)

    monkeypatch.setattr(sft, "training_loss", training_loss)
    cfg = _config("train.steps=6", "train.max_consecutive_nonfinite=3")  # checkpoints every 2 steps
    with pytest.raises(VidpostError) as error:
        train(cfg, tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert str(error.value) == (
        "step 5: 3 steps in a row had a non-finite loss or gradient (limit train.max_consecutive_nonfinite = 3); "
        f"stopped, the last good checkpoint is {checkpoints / 'step_000002'}; lower the learning rate or check the data"
    )
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_000002"]  # none at step 4: its weights were NaN
    # that checkpoint is intact: the rerun (past call 3, so without the fault) resumes to a clean run's weights
    assert train(cfg, tmp_path / "run", progress=False) == tmp_path / "run" / "model"
    train(cfg, tmp_path / "clean", progress=False)
    a, b = _weights(tmp_path / "clean"), _weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_changes_the_weights_and_logs(finished_run):
    records = read_metrics(finished_run)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)
    assert any("val/total" in r for r in records)
    assert (finished_run / "logs" / "tensorboard").is_dir()
    card = json.loads((finished_run / "model" / "vidpost.json").read_text())
    assert card["video"] == {"frames": 3, "height": 16, "width": 16}
    assert card["sampling"]["steps"] == 2
    assert card["prediction"] == "velocity" and "sigma_data" not in card
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    # stock diffusers loads the trained transformer
    loaded = WanTransformer3DModel.from_pretrained(finished_run / "model", subfolder="transformer")
    assert loaded.config.patch_size == [1, 4, 4] or tuple(loaded.config.patch_size) == (1, 4, 4)
    # the validation videos are a dataset folder with the prompts as captions
    lines = (finished_run / "samples" / "step_000004" / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["caption"].startswith("a ")


def test_a_finished_run_is_not_repeated(finished_run, caplog):
    before = _weights(finished_run)
    train(_config(), finished_run, progress=False)
    after = _weights(finished_run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_micro_batches_give_the_same_update(tmp_path):
    whole = train(_config("train.steps=1", "validation.n=1"), tmp_path / "whole", progress=False)
    split = train(
        _config("train.steps=1", "validation.n=1", "train.micro_batch_size=2"), tmp_path / "split", progress=False
    )
    # Adam's first step moves each weight by about lr x sign(gradient), blind to the gradient's scale: compare the
    # first moments, which a loss scaled by 2 doubles, and check the weights moved
    moments = [
        load_file(run.parent / "checkpoints" / "step_000001" / "optimizer.safetensors") for run in (whole, split)
    ]
    assert any(k.endswith("exp_avg") and v.abs().max() > 0 for k, v in moments[0].items())
    for key, value in moments[0].items():
        torch.testing.assert_close(moments[1][key], value, rtol=1e-4, atol=1e-4 * float(value.abs().max()))
    from vidpost.models.wan import WanVideoModel

    start = WanVideoModel.from_config(_config().model).transformer.state_dict()
    a = _weights(whole.parent)
    assert any(not torch.equal(a[k], start[k]) for k in a)


def test_compiled_blocks_train_to_the_same_weights_as_eager(tmp_path):
    from torch._dynamo.utils import counters

    eager = train(_config("train.steps=2", "validation.n=1"), tmp_path / "eager", progress=False)
    counters.clear()
    compiled = train(
        _config("train.steps=2", "validation.n=1", "train.compile=true"), tmp_path / "compiled", progress=False
    )
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile the blocks
    a, b = _weights(eager.parent), _weights(compiled.parent)
    assert a.keys() == b.keys()  # Module.compile keeps the parameter names the saved model has
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_rerun_with_another_config_is_refused(finished_run):
    with pytest.raises(VidpostError, match=r"\(train.batch_size: 4 there, 2 now\)"):  # it rewrites the steps taken
        train(_config("train.batch_size=2"), finished_run, progress=False)


def test_pretrain_refuses_an_existing_model(tmp_path):
    with pytest.raises(VidpostError, match="from scratch"):
        pretrain(_config("model.path=shapeworld-base", from_scratch=False), tmp_path, progress=False)


def test_lora_run_writes_a_lora_that_resolves_to_its_base(tmp_path, finished_run):
    out = train(
        _config(
            f"model.path={finished_run}",
            "model.lora.enabled=true",
            "model.lora.rank=2",
            "train.steps=2",
            from_scratch=False,
        ),
        tmp_path,
        progress=False,
    )
    assert out == tmp_path / "lora"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    from vidpost.models.resolve import resolve_model

    resolved = resolve_model(tmp_path)
    assert resolved.path == finished_run / "model" and resolved.lora == out


def test_with_ema_the_final_model_is_the_average_and_a_resumed_run_ends_with_the_same_one(finished_run, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(_config("train.ema_decay=0.5"), whole, progress=False) == whole / "model"
    assert train(_config("train.ema_decay=0.5"), resumed, progress=False, stop_after=3) is None
    train(_config("train.ema_decay=0.5"), resumed, progress=False)
    a, b, plain = _weights(whole), _weights(resumed), _weights(finished_run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same training steps as finished_run; only the saved weights are averaged
    assert any(not torch.equal(a[k], plain[k]) for k in a)
    assert json.loads((resumed / "summary.json").read_text())["ema_steps"] == 4


def test_what_a_model_predicts_is_kept_in_its_card_through_fine_tuning(tmp_path):
    base = tmp_path / "base"
    train(
        _config("model.tiny.prediction=preconditioned", "model.tiny.sigma_data=0.5", "train.steps=1", "validation.n=1"),
        base,
        progress=False,
    )
    card = json.loads((base / "model" / "vidpost.json").read_text())
    assert (card["prediction"], card["sigma_data"]) == ("preconditioned", 0.5)
    tuned = tmp_path / "tuned"
    train(_config(f"model.path={base}", "train.steps=1", "validation.n=1", from_scratch=False), tuned, progress=False)
    card = json.loads((tuned / "model" / "vidpost.json").read_text())
    assert (card["prediction"], card["sigma_data"]) == ("preconditioned", 0.5)


def test_batches_cover_every_clip_once_per_epoch():
    seen = torch.cat([batch_indices(10, 5, step, seed=3) for step in (1, 2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 5, 2, seed=3), batch_indices(10, 5, 2, seed=3))
    assert not torch.equal(batch_indices(10, 5, 3, seed=3), batch_indices(10, 5, 1, seed=3))
    # a batch straddling two epochs takes the end of one permutation and the start of the next
    assert (
        batch_indices(10, 4, 3, seed=0)[:2].tolist()
        == torch.cat([batch_indices(10, 4, s, seed=0) for s in (1, 2, 3)])[8:10].tolist()
    )


def test_learning_rate_schedule():
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert [learning_rate(cfg, s, 10) for s in (1, 2)] == [0.5, 1.0]
    assert learning_rate(cfg, 10, 10) == pytest.approx(0.1)
    assert learning_rate(cfg, 6, 10) == pytest.approx(0.55)
    assert learning_rate(OptimConfig(learning_rate=0.3), 7, 10) == 0.3


def test_data_needs_exactly_one_source():
    with pytest.raises(VidpostError, match="exactly one of data.path"):
        load_config(SFTConfig, None, ["data.path=/some/folder", "data.shapeworld.n=4"])
    assert load_config(SFTConfig, None, ["data.path=/some/folder"]).data.shapeworld is None


def test_a_finished_run_is_extended_by_more_steps_exactly(finished_run, tmp_path):
    """Constant learning rate: a 4-step run extended to 6 equals a 6-step run; the change is logged."""
    constant = ["optim.schedule=constant", "checkpoint.every_steps=1"]
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    train(_config(*constant, "train.steps=6"), straight, progress=False)
    assert train(_config(*constant), extended, progress=False) == extended / "model"
    assert train(_config(*constant, "train.steps=6"), extended, progress=False) == extended / "model"
    a, b = _weights(straight), _weights(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)
    changes = [json.loads(line) for line in (extended / "logs" / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"from_step": 4, "changes": {"train.steps": [4, 6]}}]
    assert json.loads((extended / "summary.json").read_text())["steps"] == 6


def test_a_stopped_run_resumes_at_a_lower_learning_rate_but_refuses_other_changes(tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=2) is None
    with pytest.raises(
        VidpostError, match=r"another config \(model.tiny.num_layers: 2 there, 3 now\); only train.steps"
    ):
        train(_config("model.tiny.num_layers=3", "optim.learning_rate=5e-4"), tmp_path, progress=False)
    with pytest.raises(VidpostError, match="train.steps 1 is below the 2 steps"):
        train(_config("train.steps=1"), tmp_path, progress=False)
    assert train(_config("optim.learning_rate=5e-4"), tmp_path, progress=False) == tmp_path / "model"
    lrs = {m["step"]: m["train/lr"] for m in read_metrics(tmp_path) if "train/lr" in m}
    assert lrs[2] > 5e-4 >= lrs[3]  # the new rate applies from the resumed step on


def test_a_run_that_never_took_a_step_takes_a_corrected_config(tmp_path):
    with pytest.raises(VidpostError):
        train(_config("model.path=/nowhere", from_scratch=False), tmp_path, progress=False)
    assert train(_config(), tmp_path, progress=False) == tmp_path / "model"


def test_a_run_resumed_at_its_last_step_still_summarises_its_final_validation(tmp_path):
    assert train(_config(), tmp_path, progress=False, stop_after=4) is None  # checkpointed at 4, no model yet
    assert train(_config(), tmp_path, progress=False) == tmp_path / "model"  # nothing left but the final save
    summary = json.loads((tmp_path / "summary.json").read_text())
    final = [m for m in read_metrics(tmp_path) if "val/total" in m][-1]
    assert summary["steps"] == 4 and summary["val/total"] == final["val/total"] and final["step"] == 4


def test_validation_has_its_own_short_bar(tmp_path, capfd):
    train(_config("train.steps=1", "validation.n=2"), tmp_path, progress=True)
    err = capfd.readouterr().err
    assert "\rval:   0%|          | 0/2" in err  # its own bar (cleared when done), not a stalled training bar
