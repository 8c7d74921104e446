"""NAME=VALUE command-line pairs (`--run flash=runs/x`, `--students 4-step=runs/y`), shared by the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable


def named_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    """{name: value} from NAME=VALUE strings, in order; anything else exits with a message naming the flag."""
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag} expects NAME=VALUE, got {item!r}")
        pairs[name] = value
    return pairs
