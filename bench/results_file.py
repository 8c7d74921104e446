"""Where a benchmark's figures go: bench/results/NAME.json, with the command, machine and date that made them."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, **figures) -> Path:
    """bench/results/{name}.json: the command line, the figures (in the order given), the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "command": "python " + " ".join(sys.argv),
        **figures,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "date": datetime.date.today().isoformat(),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
