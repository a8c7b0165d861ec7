"""Command line: ``python -m sessionlock demo`` (or the ``sessionlock`` script).

    python -m sessionlock demo --clients 4 --requests 10 --work-ms 20

Without a subcommand it prints its help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sessionlock",
        description="sessionlock: one session's concurrent requests, serialized.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show lost session updates on a real server, without and with the middleware",
        description=(
            "Start waitress on 127.0.0.1, send concurrent increments of one session's "
            "server-side counter, first to the bare app, then through SessionLockMiddleware, "
            "and print what each run lost."
        ),
    )
    demo.add_argument("--clients", type=_positive, default=4, help="client threads (default 4)")
    demo.add_argument(
        "--requests", type=_positive, default=10, help="increments per client (default 10)"
    )
    demo.add_argument(
        "--work-ms",
        type=_positive,
        default=20,
        help="milliseconds between reading and writing the count (default 20)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help()
        return 0
    from .demo import format_table, run_demo

    print(
        f"{args.clients} clients x {args.requests} increments of one session's counter "
        f"(read, work {args.work_ms} ms, write), on waitress:"
    )
    try:
        outcomes = run_demo(
            clients=args.clients,
            requests=args.requests,
            work=args.work_ms / 1000,
            on_start=lambda url: print(f"  serving {url}"),
        )
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print()
    print(format_table(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
