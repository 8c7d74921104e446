"""Group-relative advantages against a plain numpy computation, and across ranks (2 gloo processes)."""

import numpy as np
import pytest
import torch
import torch.distributed

from vidpost import dist
from vidpost.rl.advantages import advantage_stats, combine_advantages, group_advantages


def _reference(rewards, group_size, scope, clip, eps=1e-4):
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    std = r.std(axis=1, keepdims=True) if scope == "group" else r.std()
    return np.clip((r - r.mean(axis=1, keepdims=True)) / (std + eps), -clip, clip).ravel()


@pytest.mark.parametrize("scope", ["group", "batch"])
def test_group_advantages_match_numpy(scope):
    rewards = torch.rand(24, generator=torch.Generator().manual_seed(0))
    got = group_advantages(rewards, 6, scope, clip=5.0)
    np.testing.assert_allclose(got.numpy(), _reference(rewards.numpy(), 6, scope, 5.0), rtol=1e-12)


def test_tied_groups_get_zero_advantage_and_clipping_applies():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 1.0])
    adv = group_advantages(rewards, 4, "group", clip=1.5)
    assert torch.equal(adv[:4], torch.zeros(4, dtype=torch.float64))
    assert adv[7].item() == 1.5  # (1 - 0.25) / 0.433 = 1.73 -> clipped
    assert advantage_stats(adv, 4)["tied_group_fraction"] == 0.5


def test_per_reward_mode_normalises_each_reward_before_weighting():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(8, generator=g), 100 * torch.rand(8, generator=g)
    got = combine_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, 4, "per_reward", clip=50.0)
    want = _reference(a.numpy(), 4, "group", 50.0) + 0.5 * _reference(b.numpy(), 4, "group", 50.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    summed = combine_advantages({"a": a, "b": b}, {"a": 1.0, "b": 0.5}, 4, "weighted_sum", clip=50.0)
    np.testing.assert_allclose(
        summed.numpy(), _reference((a.double() + 0.5 * b.double()).numpy(), 4, "group", 50.0), rtol=1e-12
    )


def _ranks_worker(rank, store, rewards, group_size, results):
    # a file rendezvous: a free port picked by the parent could be taken by another process before rank 0 binds it
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    with dist.leave_at_end():
        local = rewards[dist.local_slice(rewards.shape[0])]
        gathered = dist.all_gather_cat(local)
        adv = group_advantages(gathered, group_size)[dist.local_slice(rewards.shape[0])]
        # numpy travels by value; a tensor would travel as a file descriptor that the parent must fetch from this
        # process, which fails if this process has already exited (a busy machine makes that likely)
        results.put((rank, adv.numpy()))


def test_groups_split_across_ranks_get_the_single_process_advantages(tmp_path, run_ranks):
    rewards = torch.rand(12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    group_size = 4  # 12 rows over 2 ranks: the middle group has 2 rows on each rank
    parts = run_ranks(_ranks_worker, tmp_path / "store", rewards, group_size)
    got = torch.from_numpy(np.concatenate([parts[0], parts[1]]))
    assert torch.equal(got, group_advantages(rewards, group_size))
    # per-rank statistics (the public-code bug) would differ
    per_rank = torch.cat([group_advantages(rewards[:6], 2), group_advantages(rewards[6:], 2)])
    assert not torch.allclose(got, per_rank)
