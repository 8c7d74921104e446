"""A prompts file: one prompt per non-empty line (`vidpost sample --prompts`, training and validation pools)."""

from __future__ import annotations

import sys
from pathlib import Path

from vidpost.errors import VidpostError


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a text file, or of stdin for '-'."""
    if path == "-":
        text = sys.stdin.read()
    else:
        file = Path(path)
        if not file.is_file():
            raise VidpostError(f"prompts file not found: {file}")
        text = file.read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise VidpostError(f"{path}: no prompts (one per line expected)")
    return prompts
