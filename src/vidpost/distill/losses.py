"""Targets and loss of trajectory distillation: a student's Euler step lands where the teacher's steps land.

Notation as in the diffusion package: flow time σ (1 = noise), velocity v, Euler steps x_{i+1} = x_i + Δ_i·v_i.
The teacher integrates on its grid σᵀ_0 > … > σᵀ_N = 0 with its guided velocity v_i = v_u + w·(v_c − v_u).
Its path is the Euler polygon: between grid points x moves on a straight line,

    xᵀ(σ) = x_i + (σ − σᵀ_i)·v_i          for σᵀ_{i+1} ≤ σ ≤ σᵀ_i.

A student with its own grid σˢ_0 > … > σˢ_K = 0 (σˢ_0 ≤ σᵀ_0) takes one Euler step per interval. Started on
the teacher's path at σˢ_j, it lands on it at σˢ_{j+1} exactly when its velocity is the teacher's average
velocity over the interval:

    ū_j = (xᵀ(σˢ_{j+1}) − xᵀ(σˢ_j)) / (σˢ_{j+1} − σˢ_j) = Σ_i W_ji·v_i,
    W_ji = |[σˢ_{j+1}, σˢ_j] ∩ [σᵀ_{i+1}, σᵀ_i]| / (σˢ_j − σˢ_{j+1})        (each row sums to 1)

and the loss is the per-sample mean square L_j = ‖vˢ(xᵀ(σˢ_j), σˢ_j, c) − ū_j‖² / D, where vˢ is the
student's velocity with its own guidance scale (1: one forward pass).

Two cases name the methods:
- the same grid (K = N): W = I and ū_j = v_j, the teacher's guided velocity at its own state. A student with
  guidance 1 then learns v_u + w·(v_c − v_u) in one pass: guidance (CFG) distillation.
- a student grid of every other teacher point: ū_j = (Δ_{2j}·v_{2j} + Δ_{2j+1}·v_{2j+1}) / (Δ_{2j} + Δ_{2j+1}),
  one student step for two teacher steps: progressive distillation (Salimans & Ho 2022) for flow matching.
Any other pair of grids works the same way (the polygon is cut where the student's points fall), so the
student's grid is the one `vidpost sample` will use with its recorded steps and shift, whatever the teacher's
grid is. ū_j is formed as a weighted sum of velocities, never as a difference of nearby states, so it keeps
float32 precision even over the last, short interval.
"""

from __future__ import annotations

import torch

from vidpost.diffusion.sampler import VelocityFn
from vidpost.diffusion.sde import ode_step


def _grids(teacher_sigmas, student_sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(teacher_sigmas, dtype=torch.float64)
    s = torch.as_tensor(student_sigmas, dtype=torch.float64)
    for name, grid in (("teacher", t), ("student", s)):
        if grid.ndim != 1 or grid.shape[0] < 2 or not bool((grid[1:] < grid[:-1]).all()) or grid[-1] != 0:
            raise ValueError(f"the {name} grid must be strictly decreasing to 0 with >= 2 entries, got {grid.tolist()}")
    if s[0] > t[0]:
        raise ValueError(f"the student grid starts at σ = {s[0].item()}, above the teacher's {t[0].item()}")
    return t, s


def interval_weights(teacher_sigmas, student_sigmas) -> torch.Tensor:
    """W (K, N) float64: the share of student interval j that teacher step i covers (module docstring)."""
    t, s = _grids(teacher_sigmas, student_sigmas)
    top = torch.minimum(s[:-1, None], t[None, :-1])  # (K, N)
    bottom = torch.maximum(s[1:, None], t[None, 1:])
    overlap = (top - bottom).clamp(min=0)
    return overlap / (s[:-1] - s[1:])[:, None]


def polygon_points(teacher_sigmas, student_sigmas) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each student start point σˢ_j (j < K) lies on the teacher's polygon: xᵀ(σˢ_j) = x_i + offset_j·v_i.

    Returns (i (K,) int64, offset (K,) float64), with i the teacher step whose interval (σᵀ_{i+1}, σᵀ_i]
    holds σˢ_j (a point on the teacher's grid is x_i itself: offset 0).
    """
    t, s = _grids(teacher_sigmas, student_sigmas)
    starts = s[:-1]  # (K,)
    # the last i with σᵀ_i >= σˢ_j: σᵀ is decreasing, so count the entries >= σˢ_j
    index = (t[None, :-1] >= starts[:, None]).sum(dim=1) - 1
    return index, starts - t[index]


def teacher_targets(
    velocity: VelocityFn, x: torch.Tensor, teacher_sigmas, student_sigmas
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the teacher's Euler steps from x (B, C, T, H, W) at σᵀ_0; return (states, targets), (K, B, ...) float32.

    states[j] = xᵀ(σˢ_j), the student's input on the teacher's path; targets[j] = ū_j, the teacher's average
    velocity over student interval j. Call under torch.no_grad (the teacher is not trained).
    """
    t, s = _grids(teacher_sigmas, student_sigmas)
    weights = interval_weights(t, s)  # (K, N)
    index, offset = polygon_points(t, s)
    num_intervals, num_steps = weights.shape
    x = x.float()
    batch = x.shape[0]
    states = torch.empty((num_intervals, *x.shape), dtype=torch.float32, device=x.device)
    targets = torch.zeros((num_intervals, *x.shape), dtype=torch.float32, device=x.device)
    for i in range(num_steps):
        v = velocity(x, t[i].expand(batch).to(torch.float32))  # (B, C, T, H, W) float32
        for j in (index == i).nonzero().flatten().tolist():
            states[j] = x + offset[j].item() * v  # the point σˢ_j on the teacher's polygon
        for j in weights[:, i].nonzero().flatten().tolist():
            targets[j] += weights[j, i].item() * v
        x = ode_step(x, v, t[i], t[i + 1]).float()
    return states, targets


def distillation_loss(v_student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean square ‖vˢ − ū‖² / D, float32 (B,), computed in float32 or wider."""
    if v_student.shape != target.shape:
        raise ValueError(
            f"student velocity and target shapes differ: {tuple(v_student.shape)} vs {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(v_student.dtype, target.dtype), torch.float32)
    err = v_student.to(dtype) - target.to(dtype)
    return err.square().mean(dim=tuple(range(1, err.ndim)))


__all__ = ["distillation_loss", "interval_weights", "polygon_points", "teacher_targets"]
