"""Precision: `auto` autocasts to bf16 only where the hardware computes bf16 natively."""

import pytest
import torch

from vidpost.errors import VidpostError
from vidpost.precision import autocast, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, "float32"), (True, False, "bf16"), (False, True, "bf16")],
)
def test_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_precision("auto", CPU) == expected
    x = torch.ones(2, 2)
    with autocast("auto", CPU):
        assert (x @ x).dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_explicit_precisions_are_kept_whatever_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("float32", CPU) == "float32"
    x = torch.ones(2, 2)
    with autocast("bf16", CPU):
        assert (x @ x).dtype == torch.bfloat16


def test_an_unknown_precision_is_a_one_line_error():
    with pytest.raises(VidpostError, match="unknown precision 'fp8'; expected one of auto, float32, bf16"):
        resolve_precision("fp8", CPU)
