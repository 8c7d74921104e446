"""The GPU benchmarks' code, run on the CPU at toy size (--smoke), so a lent GPU never meets their first bug.

What only a GPU gives (CUDA timings, peak memory, MFU) is None here; everything else is the same code path:
the same Wan classes built from a config, rollout, the Flash-GRPO update and each cache configuration.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench_module(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str):
        for loaded in ("gpu_grpo_step", name):  # fresh modules, results redirected to tmp_path
            sys.modules.pop(loaded, None)
        module = importlib.import_module(name)
        monkeypatch.setattr(importlib.import_module("gpu_grpo_step"), "RESULTS", tmp_path)
        monkeypatch.setattr(module, "RESULTS", tmp_path)
        return module

    return load


def test_gpu_grpo_step_runs_a_lora_and_a_full_iteration_on_a_tiny_wan(bench_module, tmp_path):
    bench_module("gpu_grpo_step").main(["--smoke", "--steps", "4", "--group", "2"])
    result = json.loads((tmp_path / "smoke" / "gpu_grpo_step.json").read_text())
    assert result["smoke"] is True
    assert [row["mode"] for row in result["rows"]] == ["lora", "full"]
    for row in result["rows"]:
        assert row["tokens"] == 2 * 2 * 2  # a 5x32x32 clip -> (2, 4, 4) latents -> patches (1, 2, 2)
        assert set(row["seconds"]) == {"rollout", "decode_one_video", "train_step"}
        assert all(s > 0 for s in row["seconds"].values())
        assert row["mfu"] is None and row["peak_memory_gb"] is None  # no GPU, no datasheet peak
    lora, full = result["rows"]
    assert lora["params"] > full["params"]  # the adapters are counted on top of the frozen base


def test_gpu_inference_times_every_configuration_with_and_without_the_cache(bench_module, tmp_path):
    module = bench_module("gpu_inference")
    module.main(["--smoke", "--no-compile"])
    result = json.loads((tmp_path / "smoke" / "gpu_inference.json").read_text())
    rows = {(row["model"], row["acceleration"]): row for row in result["rows"]}
    expected_nfe = {name: steps * (2 if guidance > 1 else 1) for name, steps, guidance in module.CONFIGURATIONS}
    assert set(rows) == {(name, acc) for name in expected_nfe for acc in ("none", "first_block")}
    for (name, _), row in rows.items():
        assert row["nfe"] == expected_nfe[name]  # a cache skips blocks, never transformer calls
        assert row["seconds_per_video"] > 0
    assert rows[("teacher", "none")]["speedup"] == 1.0


def test_without_a_gpu_and_without_smoke_the_scripts_skip_and_say_so(bench_module, tmp_path, monkeypatch, capsys):
    module = bench_module("gpu_grpo_step")
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    module.main([])
    assert json.loads((tmp_path / "gpu_grpo_step.json").read_text())["skipped"] == "no CUDA GPU"
    assert "skipped" in capsys.readouterr().out
