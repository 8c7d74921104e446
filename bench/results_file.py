"""Where a benchmark's figures go: bench/results/NAME.json, with the command, machine and date that made them."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows; platform.processor() is often empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line naming what a figure was measured on: CPU, threads in use, Python and torch."""
    python = platform.python_version()
    return f"{cpu_model()}, {torch.get_num_threads()} threads, Python {python}, torch {torch.__version__}"


def write_results(name: str, **figures) -> Path:
    """bench/results/{name}.json: the command line, the figures (in the order given), the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "command": "python " + " ".join(sys.argv),
        **figures,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path
