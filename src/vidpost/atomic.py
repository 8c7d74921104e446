"""Atomic file writes: a kill mid-write never leaves a half-written clip, config or checkpoint."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success it replaces `path`, on failure it is removed.

    Beside the target so that os.replace stays on one filesystem (atomic); the suffix is kept last because
    writers such as imageio choose the format from it. Not mkstemp: its 0600 mode would stick to the file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
