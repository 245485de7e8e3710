"""The command line: ``python -m ipchannel demo``. Thin by design; the library never imports it."""

from __future__ import annotations

import argparse
import sys

from ._errors import ChannelError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ipchannel",
        description="ipchannel: peer processes on one machine share one in-process service.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="watch worker processes share a channel while its host is killed",
        description="Start worker processes sharing a channel, SIGKILL its host, watch another take over.",
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes to start (default 4)")
    demo.add_argument("--kills", type=int, default=2, help="hosts to kill, one after another (default 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return 0 on success, 1 on failure, 2 for bad usage."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo  # noqa: PLC0415 - multiprocessing only when the demo runs

        try:
            return run_demo(workers=args.workers, kills=args.kills, out=sys.stdout)
        except ChannelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 2  # unreachable: argparse rejects unknown commands with exit code 2
