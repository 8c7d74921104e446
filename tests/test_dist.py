"""Distributed training (2 gloo processes on the CPU) gives the one-process result: one SFT step, one GRPO
iteration and one distillation step at world size 2 write the weights, optimizer moments and metrics of world
size 1 with the same global batch, and a checkpoint written at world size 2 (SFT; distillation, whose checkpoint
also holds the round's teacher) resumes at world size 1 to the weights of an uninterrupted run.

The optimizer moments are compared, not only the weights: Adam's first update is nearly sign(g), so it hides a
gradient off by the world size; its first moment (1 - β1)·g does not (gradient clipping is off for that reason).
"""

import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidpost import dist
from vidpost.config import load_config
from vidpost.data.dataset import read_metadata
from vidpost.errors import VidpostError
from vidpost.models.wan import WanVideoModel
from vidpost.recipes import distill, enhance, grpo, sft
from vidpost.recipes.grpo import minibatch_indices
from vidpost.runlog import read_metrics

SFT = [
    "data.shapeworld.style=curated",
    "data.shapeworld.n=8",
    "data.shapeworld.world.frames=3",
    "data.shapeworld.world.height=16",
    "data.shapeworld.world.width=16",
    "data.shapeworld.world.max_objects=1",
    "model.tiny.patch_size=[1,4,4]",
    "train.steps=2",
    "train.batch_size=4",
    "train.micro_batch_size=1",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "optim.grad_clip=1e6",
    "sampling.steps=2",
    "validation.n=3",  # uneven shares over 2 ranks
    "validation.every_steps=1",
    "checkpoint.every_steps=1",
    "log.every_steps=1",
]
TINY = ["model.path=null", "model.tiny.patch_size=[1,4,4]"]
GRPO = [
    "video={frames: 3, height: 16, width: 16}",
    "prompts.n=8",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=2",
    "rollout.sampling.steps=4",
    "rollout.sampling.guidance=2.0",
    "strategy.flash.k_max=2",
    "strategy.flash.shared_prefix=true",  # buckets of equal k, and with
    "train.seed=1",  # k = 0 and 2 for the two groups: the ranks run different numbers of forwards in the rollout
    "reward.weights={frame_consistency: 1.0, flicker: 1.0}",  # dense: non-zero advantages from a random model
    "train.steps=1",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "train.clip_range=0.2",
    "optim.grad_clip=1e6",
    "train.kl_beta=0.1",
    "train.ema_decay=0.5",
    "train.minibatches=2",
    "validation.n=1",  # rank 1 samples nothing
    "validation.every_steps=0",
]
LORA = ["model.lora.enabled=true", "model.lora.rank=2", "model.lora.alpha=2"]
DISTILL = [
    "mode=both",  # guidance and steps: the teacher runs guided, two passes per step
    "student_steps=[2]",
    "prompts.n=8",
    "train.steps_per_round=2",
    "train.prompts_per_step=2",
    "train.micro_batch_size=1",
    "train.precision=float32",
    "optim.learning_rate=1e-3",
    "optim.grad_clip=1e6",
    "validation.n=3",  # uneven shares over 2 ranks
    "validation.every_steps=1",
    "checkpoint.every_steps=1",
    "log.every_steps=1",
]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The tiny model saved as a model directory: a LoRA run needs a base to name in its model card."""
    path = tmp_path_factory.mktemp("base")
    WanVideoModel.build_tiny("pixel", patch_size=(1, 4, 4)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_teacher(tiny_video_model):
    """The tiny model with a card (4 steps at guidance 2, 3x16x16 videos): what distillation reads its teacher from."""
    return tiny_video_model("teacher", {"steps": 4, "shift": 3.0, "guidance": 2.0})


# ------------------------------------------------------------------------------------------ 2 processes


def _run_sft(overrides, out):
    sft.train(load_config(sft.SFTConfig, None, overrides), out, progress=False, stop_after=1)


def _run_grpo(overrides, out):
    grpo.train(load_config(grpo.GRPOConfig, None, overrides), out, progress=False)


def _run_distill(overrides, out):
    distill.train(load_config(distill.DistillConfig, None, overrides), out, progress=False, stop_after=1)


def _worker(rank, store, job, overrides, out, results):
    torch.set_num_threads(1)
    # a file rendezvous: a free port picked by the parent could be taken by another process before rank 0 binds it
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with dist.leave_at_end():
        job(overrides, out)
    results.put((rank, None))


def _world_size_2(run_ranks, job, overrides, out, store, timeout_s: float = 600) -> None:
    """Run job(overrides, out) on 2 ranks; fail at once if a rank dies, else wait generously (a busy machine is
    slow)."""
    run_ranks(_worker, store, job, overrides, out, timeout_s=timeout_s)


# ------------------------------------------------------------------------------------------ comparisons


def _assert_same_tensors(got: dict, want: dict, what: str) -> None:
    """Equal up to float32 rounding, which batches of another size change; Adam turns a rounding difference in a
    near-zero gradient into up to ~5e-4 of a tensor's largest value, so atol is 1e-3 of it (a wrong loss
    normalisation is off by a relative 1.0)."""
    assert set(got) == set(want), what
    for name, w in want.items():
        atol = 1e-3 * float(w.abs().max()) if w.is_floating_point() else 0
        torch.testing.assert_close(got[name], w, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{what} {name}: {m}")


def _assert_same_checkpoint(got, want) -> None:
    moments = load_file(want / "optimizer.safetensors")  # first: the moments show the gradient, the weights hardly
    assert any(k.endswith("exp_avg") and v.abs().max() > 0 for k, v in moments.items())  # a gradient to compare
    _assert_same_tensors(load_file(got / "optimizer.safetensors"), moments, "optimizer")
    _assert_same_tensors(load_file(got / "trainable.safetensors"), load_file(want / "trainable.safetensors"), "weights")


def _assert_same_metrics(got, want, step) -> None:
    rows = [{k: v for r in read_metrics(run) if r["step"] == step for k, v in r.items()} for run in (got, want)]
    keys = {k for k in rows[1] if k != "step" and not k.startswith(("time/", "train/seconds", "train/clips_per"))}
    assert keys, f"no metrics at step {step} to compare"
    assert keys <= set(rows[0])
    for key in keys:
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-4, abs=1e-6), key


def _assert_same_videos(got, want) -> None:
    (a, _), (b, _) = read_metadata(got), read_metadata(want)
    assert [r["caption"] for r in a] == [r["caption"] for r in b]
    for x, y in zip(a, b, strict=True):
        u, v = np.load(got / x["file"]).astype(int), np.load(want / y["file"]).astype(int)
        assert np.abs(u - v).max() <= 1  # uint8 frames: float rounding may move a pixel by one level


# ------------------------------------------------------------------------------------------ tests


def test_sft_step_at_world_size_2_is_world_size_1_and_its_checkpoint_resumes_at_world_size_1(tmp_path, run_ranks):
    one, two = tmp_path / "one", tmp_path / "two"
    assert sft.train(load_config(sft.SFTConfig, None, SFT), one, progress=False) == one / "model"
    _world_size_2(run_ranks, _run_sft, SFT, two, tmp_path / "store")  # stops after step 1 (as SIGTERM would)
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step_000001"]
    _assert_same_checkpoint(two / "checkpoints" / "step_000001", one / "checkpoints" / "step_000001")
    _assert_same_metrics(two, one, step=1)
    _assert_same_videos(two / "samples" / "step_000001", one / "samples" / "step_000001")

    assert sft.train(load_config(sft.SFTConfig, None, SFT), two, progress=False) == two / "model"  # resumed at 1
    weights = "model/transformer/diffusion_pytorch_model.safetensors"
    _assert_same_tensors(load_file(two / weights), load_file(one / weights), "final weights")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_iteration_at_world_size_2_is_world_size_1(lora, tmp_path, tiny_base, run_ranks):
    overrides = [*GRPO, *([f"model.path={tiny_base}", *LORA] if lora else TINY)]
    one, two = tmp_path / "one", tmp_path / "two"
    final = one / ("lora" if lora else "model")
    assert grpo.train(load_config(grpo.GRPOConfig, None, overrides), one, progress=False) == final
    _world_size_2(run_ranks, _run_grpo, overrides, two, tmp_path / "store")
    _assert_same_checkpoint(two / "checkpoints" / "step_000001", one / "checkpoints" / "step_000001")
    _assert_same_metrics(two, one, step=1)
    _assert_same_videos(two / "samples" / "step_000001", one / "samples" / "step_000001")
    weights = (
        "lora/pytorch_lora_weights.safetensors" if lora else "model/transformer/diffusion_pytorch_model.safetensors"
    )
    _assert_same_tensors(load_file(two / weights), load_file(one / weights), "final weights (EMA)")


def test_nft_iteration_at_world_size_2_is_world_size_1(tmp_path, run_ranks):
    flash = ("strategy.flash.k_max=2", "strategy.flash.shared_prefix=true")
    overrides = [*(o for o in GRPO if o not in flash), *TINY, "strategy.name=nft", "strategy.nft.train_fraction=0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert grpo.train(load_config(grpo.GRPOConfig, None, overrides), one, progress=False) == one / "model"
    _world_size_2(run_ranks, _run_grpo, overrides, two, tmp_path / "store")
    _assert_same_checkpoint(two / "checkpoints" / "step_000001", one / "checkpoints" / "step_000001")
    _assert_same_metrics(two, one, step=1)


def test_minibatches_take_the_same_part_of_every_group():
    # 3 groups of 4 transitions in 2 minibatches: the first two and the last two of each group
    assert [m.tolist() for m in minibatch_indices(12, 3, 2)] == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    # a rank holding groups 1 and 2 holds exactly its part of each minibatch (indices local to it)
    whole = minibatch_indices(12, 3, 2)
    assert [(m[m >= 4] - 4).tolist() for m in whole] == [m.tolist() for m in minibatch_indices(8, 2, 2)]


def test_one_process_needs_no_process_group():
    dist.init_from_env()  # no torchrun variables here: nothing happens
    assert not dist.is_distributed() and dist.world_size() == 1 and dist.device() == torch.device("cpu")
    assert dist.share(5) == slice(0, 5) and dist.gather_objects("x") == ["x"]
    t = torch.arange(3.0)
    full = dist.full_tensors({"t": t, "n": 1})
    assert torch.equal(full["t"], t) and full["n"] == 1
    assert dist.shard_like(t, torch.zeros(3)) is t


def _leave_worker(rank, store, marker, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with dist.leave_at_end():
        if rank == 0:
            time.sleep(1.0)  # rank 0 still writes its last checkpoint
            marker.write_text("written")
    results.put((rank, marker.exists()))


def _resume_worker(rank, store, root, unreadable_on_rank_1, results):
    """Both ranks resume from `root`, where step 2's weights are truncated; rank 1 may fail to read step 1 too."""
    from vidpost import checkpoint

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with dist.leave_at_end():
        if rank == 1 and unreadable_on_rank_1:

            def unreadable(path, *args):
                raise checkpoint.UnreadableCheckpoint(f"{path}: unreadable checkpoint (only on rank 1)")

            checkpoint.load_checkpoint = unreadable
        params = {"w": torch.nn.Parameter(torch.zeros(3))}
        try:
            path, state = checkpoint.load_latest_checkpoint(root, params, torch.optim.AdamW(params.values()))
            results.put((rank, (path.name, state["mark"], float(params["w"][0]))))
        except VidpostError as error:
            results.put((rank, str(error)))


@pytest.mark.parametrize("rank_1_fails", [False, True])
def test_every_rank_resumes_from_the_checkpoint_rank_0_chose_or_all_stop(tmp_path, run_ranks, rank_1_fails):
    from vidpost.checkpoint import save_checkpoint

    for step in (1, 2):
        params = {"w": torch.nn.Parameter(torch.full((3,), float(step)))}
        save_checkpoint(tmp_path / "ckpt", step, params, torch.optim.AdamW(params.values()), {"mark": step})
    broken = tmp_path / "ckpt" / "step_000002" / "trainable.safetensors"
    broken.write_bytes(broken.read_bytes()[:50])
    got = run_ranks(_resume_worker, tmp_path / "store", tmp_path / "ckpt", rank_1_fails)
    if rank_1_fails:
        assert all("not every rank could read" in v and "step_000001" in v for v in got.values()), got
    else:
        assert got == {0: ("step_000001", 1, 1.0), 1: ("step_000001", 1, 1.0)}


def test_no_rank_leaves_the_process_group_before_the_others_are_done(tmp_path, run_ranks):
    # a rank that closed its connections while rank 0 still wrote could abort rank 0's exit (SIGABRT in CI)
    # without the barrier (wait=False, the path after an error) rank 1 finds no marker
    assert run_ranks(_leave_worker, tmp_path / "store", tmp_path / "marker") == {0: True, 1: True}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_distill_step_at_world_size_2_is_world_size_1_and_its_checkpoint_resumes_at_world_size_1(
    lora, tmp_path, tiny_teacher, run_ranks
):
    overrides = [f"model.path={tiny_teacher}", *DISTILL, *(LORA if lora else [])]
    config = load_config(distill.DistillConfig, None, overrides)
    one, two = tmp_path / "one", tmp_path / "two"
    final = "lora" if lora else "model"
    assert distill.train(config, one, progress=False) == one / final
    _world_size_2(run_ranks, _run_distill, overrides, two, tmp_path / "store")  # stops after step 1 of 2
    assert [p.name for p in (two / "checkpoints").iterdir()] == ["step_000001"]
    _assert_same_checkpoint(two / "checkpoints" / "step_000001", one / "checkpoints" / "step_000001")
    assert any(
        k.startswith("teacher.") for k in load_file(two / "checkpoints" / "step_000001" / "trainable.safetensors")
    )
    _assert_same_metrics(two, one, step=1)
    _assert_same_videos(two / "samples" / "teacher", one / "samples" / "teacher")
    _assert_same_videos(two / "samples" / "step_000001", one / "samples" / "step_000001")

    assert distill.train(config, two, progress=False) == two / final  # resumed at step 1, in one process
    weights = (
        "lora/pytorch_lora_weights.safetensors" if lora else "model/transformer/diffusion_pytorch_model.safetensors"
    )
    _assert_same_tensors(load_file(two / weights), load_file(one / weights), "final weights")


def _refuse_distill(overrides, out):
    with pytest.raises(VidpostError, match="prompts_per_step 3 must be a multiple of the world size 2"):
        distill.train(load_config(distill.DistillConfig, None, overrides), out, progress=False)


def _refuse_enhance(overrides, out):
    with pytest.raises(VidpostError, match="launch it without torchrun"):
        enhance.train(load_config(enhance.EnhanceConfig, None, overrides), out, progress=False)


def test_distill_needs_prompts_that_split_over_the_ranks(tmp_path, tiny_teacher, run_ranks):
    overrides = [f"model.path={tiny_teacher}", *DISTILL, "train.prompts_per_step=3"]
    _world_size_2(run_ranks, _refuse_distill, overrides, tmp_path / "run", tmp_path / "store")  # both ranks refuse


def test_the_toy_enhancer_trains_in_one_process(tmp_path, run_ranks):
    _world_size_2(run_ranks, _refuse_enhance, [], tmp_path / "run", tmp_path / "store")  # both ranks refuse


def test_a_count_the_ranks_cannot_share_is_one_line_naming_its_key(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 4)
    dist.require_divisible({"train.batch_size": 8, "grpo.prompts_per_step": 4})  # both split evenly
    with pytest.raises(VidpostError) as info:
        dist.require_divisible({"train.batch_size": 8, "rollout.prompts_per_step": 6})
    assert str(info.value) == "rollout.prompts_per_step 6 must be a multiple of the world size 4"


@pytest.mark.parametrize(
    ("recipe", "schema", "overrides", "refused"),
    [
        (sft.train, sft.SFTConfig, ["train.batch_size=3"], "train.batch_size 3"),
        (grpo.train, grpo.GRPOConfig, ["rollout.prompts_per_step=3"], "rollout.prompts_per_step 3"),
        (distill.train, distill.DistillConfig, ["train.prompts_per_step=3"], "train.prompts_per_step 3"),
        (enhance.train, enhance.EnhanceConfig, ["model.path=lm", "sft.pairs_per_step=3"], "sft.pairs_per_step 3"),
        (enhance.train, enhance.EnhanceConfig, ["model.path=lm", "grpo.prompts_per_step=3"], "grpo.prompts_per_step 3"),
    ],
    ids=["sft", "grpo", "distill", "enhance-sft", "enhance-grpo"],
)
def test_every_recipe_checks_its_counts_against_the_world_size_before_any_work(
    recipe, schema, overrides, refused, tmp_path, monkeypatch
):
    cfg = load_config(schema, None, overrides)  # a config loads at any world size; the run refuses it
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(VidpostError) as info:
        recipe(cfg, tmp_path / "run", progress=False)
    assert str(info.value) == f"{refused} must be a multiple of the world size 2"
    assert not (tmp_path / "run").exists()
