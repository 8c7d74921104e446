"""Distillation targets on hand-worked grids and velocity fields: interval weights, polygon points, the targets a
teacher's Euler path gives (CFG and progressive distillation as special cases), and the loss."""

import pytest
import torch

from vidpost.diffusion.sampler import run_steps
from vidpost.diffusion.schedule import sampling_sigmas
from vidpost.distill.losses import distillation_loss, interval_weights, polygon_points, teacher_targets


def test_interval_weights_on_a_hand_worked_grid():
    # teacher steps [1, .75], [.75, .5], [.5, 0]; student intervals [1, .6] (length .4) and [.6, 0] (length .6)
    w = interval_weights([1.0, 0.75, 0.5, 0.0], [1.0, 0.6, 0.0])
    expected = torch.tensor([[0.25 / 0.4, 0.15 / 0.4, 0.0], [0.0, 0.1 / 0.6, 0.5 / 0.6]], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)
    index, offset = polygon_points([1.0, 0.75, 0.5, 0.0], [1.0, 0.6, 0.0])
    assert index.tolist() == [0, 1]  # σ = .6 lies on teacher step 1, .15 below its start
    torch.testing.assert_close(offset, torch.tensor([0.0, -0.15], dtype=torch.float64))


def test_the_same_grid_is_cfg_distillation_and_every_other_point_is_progressive_distillation():
    sigmas = sampling_sigmas(8, 5.0)
    assert torch.equal(interval_weights(sigmas, sigmas), torch.eye(8, dtype=torch.float64))  # exactly
    index, offset = polygon_points(sigmas, sigmas)
    assert index.tolist() == list(range(8)) and bool((offset == 0).all())
    halved = torch.cat([sigmas[0:-1:2], sigmas[-1:]])  # σ_0, σ_2, σ_4, σ_6, 0
    w = interval_weights(sigmas, halved)
    delta = sigmas[:-1] - sigmas[1:]
    for j in range(3):  # one student step for two teacher steps, weighted by their lengths
        a, b = delta[2 * j], delta[2 * j + 1]
        assert w[j, 2 * j].item() == pytest.approx((a / (a + b)).item(), rel=1e-12)
        assert w[j, 2 * j + 1].item() == pytest.approx((b / (a + b)).item(), rel=1e-12)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4, dtype=torch.float64))


def test_targets_of_a_hand_worked_euler_path():
    # v(x, σ) = x on teacher grid [1, .5, 0] from x_0 = 1: v_0 = 1, x_1 = .5, v_1 = .5, x_2 = .25
    def velocity(x, sigma):
        return x.clone()

    x0 = torch.ones(1, 1)
    states, targets = teacher_targets(velocity, x0, [1.0, 0.5, 0.0], [1.0, 0.0])
    assert states.flatten().tolist() == [1.0] and targets.flatten().tolist() == [0.75]  # (.25 − 1) / (0 − 1)
    # student [1, .25, 0]: x(.25) = x_1 + (.25 − .5)·v_1 = .375; ū_0 = (.375 − 1)/(.25 − 1) = 5/6,
    # ū_1 = (.25 − .375)/(−.25)
    states, targets = teacher_targets(velocity, x0, [1.0, 0.5, 0.0], [1.0, 0.25, 0.0])
    torch.testing.assert_close(states.flatten(), torch.tensor([1.0, 0.375]))
    torch.testing.assert_close(targets.flatten(), torch.tensor([5 / 6, 0.5]))


def test_a_student_that_follows_the_targets_lands_on_the_teacher_path():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 1, 2, 2, generator=generator)

    def teacher(x, sigma):  # a nonlinear field, different per σ
        return torch.tanh(x * a) + sigma.view(-1, 1, 1, 1, 1) * x.square()

    x0 = torch.randn(2, 3, 1, 2, 2, generator=generator)
    t_grid, s_grid = sampling_sigmas(20, 5.0), sampling_sigmas(4, 5.0)
    states, targets = teacher_targets(teacher, x0, t_grid, s_grid)
    torch.testing.assert_close(states[0], x0)
    steps = iter(targets)
    student = run_steps(lambda x, sigma: next(steps), x0, s_grid)  # one Euler step per student interval
    expected = run_steps(teacher, x0, t_grid).final
    torch.testing.assert_close(student.final, expected, rtol=1e-5, atol=1e-5)
    # and the same grid gives the teacher's own velocities at its own states
    states, targets = teacher_targets(teacher, x0, s_grid, s_grid)
    for j in range(4):
        torch.testing.assert_close(targets[j], teacher(states[j], s_grid[j].expand(2).float()), rtol=0, atol=0)


def test_distillation_loss_is_the_per_sample_mean_square():
    v = torch.tensor([[1.0, 2.0], [0.5, 0.5]])
    target = torch.tensor([[0.0, 0.0], [0.5, 1.5]])
    assert distillation_loss(v, target).tolist() == [2.5, 0.5]
    assert distillation_loss(v.bfloat16(), target).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes differ"):
        distillation_loss(v, target[:1])


def test_grids_that_cannot_be_matched_are_refused():
    with pytest.raises(ValueError, match="above the teacher's"):
        interval_weights([0.9, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="strictly decreasing to 0"):
        interval_weights([1.0, 0.5], [1.0, 0.0])
