"""What every benchmark's command line shares: its errors in one line, a readable summary, the JSON line last."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from dfp_ros.contracts import ContractError

# Failures a benchmark reports in one line (exit 1) rather than with a traceback.
BENCH_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, ContractError)


def run_and_report(name: str, run: Callable[[argparse.Namespace], dict[str, Any]], args: argparse.Namespace,
                   summary: Callable[[dict[str, Any]], str], *, errors: tuple[type[BaseException], ...] = BENCH_ERRORS,
                   to_json: Callable[[dict[str, Any]], Any] = lambda r: r) -> int:
    """`run(args)`; print `summary(result)` then the result as one JSON line (the last line); exit code."""
    try:
        result = run(args)
    except errors as e:
        print(f"dfp bench {name}: error: {e}", file=sys.stderr)
        return 1
    print(summary(result))
    print(json.dumps(to_json(result)))
    return 0


def standalone_main(prog: str, description: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
                    run_from_args: Callable[[argparse.Namespace], int], argv: list[str] | None = None,
                    formatter: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter) -> int:
    """`python -m dfp_ros.tools.<bench>`: the same arguments and output as its `dfp bench` subcommand."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter)
    add_arguments(p)
    return run_from_args(p.parse_args(argv))
