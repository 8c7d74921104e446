"""Step plans: iso-temporal grouping for flash, a trained fraction for full, a moving window for window."""

import pytest
import torch

from vidpost.config import load_config
from vidpost.errors import ConfigError
from vidpost.rl.strategies import StrategyConfig, plan_steps, window_start


def _plan(overrides, P=16, G=4, N=20, iteration=0, seed=0):
    cfg = load_config(StrategyConfig, None, overrides)
    return plan_steps(cfg, P, G, N, iteration, torch.Generator().manual_seed(seed))


def test_flash_groups_share_one_sde_step_and_groups_differ():
    plan = _plan(["name=flash"])
    assert plan.sde.sum(dim=1).eq(1).all()  # one SDE step per sample
    k = plan.sde.float().argmax(dim=1).view(16, 4)  # (P, G)
    assert (k == k[:, :1]).all()  # iso-temporal: every member of a group at the same k
    assert torch.equal(k[:, 0], plan.k)
    assert len(plan.k.unique()) > 1  # groups draw their own k
    assert plan.k.min() >= 0 and plan.k.max() <= 9  # default: the first half of 20 steps
    assert torch.equal(plan.train, plan.sde)


def test_flash_range_is_configurable_and_checked():
    plan = _plan(["name=flash", "flash.k_min=4", "flash.k_max=6"])
    assert set(plan.k.tolist()) <= {4, 5, 6}
    with pytest.raises(ValueError, match="k_max"):
        _plan(["name=flash", "flash.k_max=20"])


def test_full_trains_a_fraction_of_every_sample_steps():
    plan = _plan(["name=full", "full.train_fraction=0.6"])
    assert plan.sde.all()
    assert plan.train.sum(dim=1).eq(12).all()
    assert not (plan.train == plan.train[:1]).all()  # drawn per sample (DanceGRPO's rule, the default)


def test_full_trains_the_first_steps_in_order_as_flow_grpo():
    plan = _plan(["name=full", "full.train_fraction=0.6", "full.steps=first"])
    assert plan.train[:, :12].all() and not plan.train[:, 12:].any()


@pytest.mark.parametrize("fraction,expected", [(0.33, 6), (0.6, 12), (0.99, 19), (0.01, 1), (1.0, 20)])
def test_the_trained_count_is_the_anchors_floor(fraction, expected):
    """int(N * timestep_fraction), as Flow-GRPO and DanceGRPO count it (at least one step)."""
    for steps in ("first", "random"):
        plan = _plan(["name=full", f"full.train_fraction={fraction}", f"full.steps={steps}"])
        assert plan.train.sum(dim=1).eq(expected).all()
        cfg = load_config(StrategyConfig, None, ["name=full", f"full.train_fraction={fraction}"])
        assert cfg.trained_steps(20) == expected


def test_window_advances_and_stops():
    cfg = load_config(StrategyConfig, None, ["name=window", "window.size=4", "window.advance_every=2"]).settings
    assert [window_start(cfg, 10, it) for it in (0, 1, 2, 3, 4, 100)] == [0, 0, 1, 1, 2, 6]
    plan = _plan(["name=window", "window.size=4", "window.advance_every=2"], iteration=5)
    assert plan.sde[:, 2:6].all() and plan.sde.sum() == 4 * 64


def test_settings_of_another_strategy_are_an_error():
    with pytest.raises(ConfigError, match="strategy 'window'"):
        load_config(StrategyConfig, None, ["name=flash", "window.size=3"])
