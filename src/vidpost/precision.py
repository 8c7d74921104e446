"""Numeric precision of sampling and training: float32, bf16 autocast, or `auto` (bf16 where it is native).

with autocast(cfg.precision, model.device):
    velocity = model(...)
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch

from vidpost.errors import VidpostError

PRECISIONS = ("auto", "float32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 in hardware: a CUDA GPU with bf16, or an x86 CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 autocast is emulated and slower than float32: on an AVX2-only AMD EPYC a ShapeWorld forward
    pass took 4.3x and a training step about 15x as long, where AVX512-BF16 machines run them about twice as
    fast as float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """float32 or bf16: `auto` is bf16 where the hardware has it natively (see native_bf16), else float32."""
    if precision not in PRECISIONS:
        raise VidpostError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "float32"
    return precision


def autocast(precision: str, device: torch.device):
    """bf16 autocast, or nothing for float32; `auto` picks whichever is faster on `device` (resolve_precision)."""
    if resolve_precision(precision, device) == "float32":
        return nullcontext()
    # Wan keeps its norms in float32 (diffusers' _keep_in_fp32_modules); torch then warns on every call that
    # the fused RMSNorm kernel cannot take bf16 input. Expected, so not shown.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    return torch.autocast(device.type, dtype=torch.bfloat16)
