"""Command line: ``python -m sessionlock`` (or the ``sessionlock`` script).

    sessionlock --version
    sessionlock demo --clients 4 --requests 10 --work-ms 20
    sessionlock check myapp:app          # the lock's configuration and its problems
    sessionlock held file:///var/lib/myapp/sessionlock   # sessions held (hashed), queued

Without a subcommand it prints its help. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
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
        prog="sessionlock",
        description="sessionlock: one session's concurrent requests, serialized.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="import an app and print its lock's configuration and problems",
        description=(
            "Import APP as a server would (module:app, or module:factory() with literal "
            "arguments), find the SessionLockMiddleware layers in it, print their effective "
            "configuration and the problems the checks would report. Exit status: 0 no "
            "problem, 1 problems, 2 no lock found or the app could not be imported."
        ),
    )
    check.add_argument("app", metavar="APP", help="module:app or module:factory()")
    held = commands.add_parser(
        "held",
        help="list the sessions a backend holds now (hashed) and how many wait",
        description=(
            "List the keys (keyed hashes, never session ids) that a file:// or redis:// "
            "backend holds right now, and the processes queued for each; reads only. "
            "memory:// is per process: exit status 2."
        ),
    )
    held.add_argument("url", metavar="BACKEND_URL", help="file:///dir or redis://host:6379/0")
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
    demo.add_argument(
        "--serve",
        action="store_true",
        help="serve the seed's exam page instead: the same Flask app without and with "
        "sessionlock, side by side in a browser",
    )
    demo.add_argument("--host", help="with --serve: the address to listen on (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=_port, help="with --serve: the port (default 8000; 0: a free one)"
    )
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: a free port), got {value}")
    return value


def _version() -> str:
    """The installed distribution's version (what pip and the wheel's METADATA say)."""
    try:
        return importlib.metadata.version("sessionlock")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        from . import __version__

        return f"{__version__} (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from .cli_check import run

        return run(args.app)
    if args.command == "held":
        from .cli_held import run as run_held

        return run_held(args.url)
    if args.command != "demo":
        parser.print_help()
        return 0
    if args.serve:
        return _serve(args.host or "127.0.0.1", 8000 if args.port is None else args.port)
    if args.host is not None or args.port is not None:
        parser.error("demo: --host and --port go with --serve")
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


def _serve(host: str, port: int) -> int:
    try:  # Flask and waitress come with the [demo] extra
        from .demo_exam import serve_command

        return serve_command(host, port)
    except ImportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
