"""A run's record: its metrics, one JSON object per line in `logs/metrics.jsonl` and the same scalars in
TensorBoard, and the held-out videos each validation saves in `samples/step_NNNNNN/` (a dataset folder).

    log = RunLog(run_dir, resume_step=0)
    log.write(step, {"train/loss": 0.31, "train/lr": 1e-4})

On resume from step s, lines logged after s by the interrupted run are dropped, so the log reads as one
uninterrupted run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from vidpost.atomic import atomic_path

METRICS_NAME = "metrics.jsonl"


class RunLog:
    def __init__(self, run_dir: str | Path, resume_step: int = 0, tensorboard: bool = True) -> None:
        self.dir = Path(run_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_NAME
        if self.path.is_file():
            self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import (
                SummaryWriter,  # imported lazily: tensorboard is slow to import
            )

            self._tb = SummaryWriter(self.dir / "tensorboard", purge_step=resume_step + 1 if resume_step else None)

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _plain(value):
    return value if isinstance(value, (str, int, bool)) or value is None else float(value)


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "logs" / METRICS_NAME
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def samples_dir(run_dir: str | Path, step: int) -> Path:
    """Where the validation at `step` saves its held-out videos."""
    return Path(run_dir) / "samples" / f"step_{step:06d}"


def saved_evaluations(run_dir: str | Path) -> list[int]:
    """The steps whose held-out videos the run saved, in order."""
    steps = (p.name.removeprefix("step_") for p in (Path(run_dir) / "samples").glob("step_*"))
    return sorted(int(s) for s in steps if s.isdigit())
