"""argparse types for comma-separated lists, shared by `dfp` and the benchmarks."""

from __future__ import annotations

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """'256,256' -> (256, 256)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def positive_float_list(text: str) -> tuple[float, ...]:
    """'0.1,0.5' -> (0.1, 0.5); at least one, all positive."""
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return vals


def name_list(text: str) -> list[str]:
    """'a, b,' -> ['a', 'b']."""
    return [k.strip() for k in text.split(",") if k.strip()]
