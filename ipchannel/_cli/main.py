"""The command line: ``python -m ipchannel status|demo``. Thin by design; the library never imports it.

Exit codes, as usual for command lines: 0 success, 1 failure (for ``status NAME``:
the channel has no live host), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, TextIO

from .._errors import ChannelError
from .._options import resolve_runtime_dir, validate_name
from .._version import __version__

if TYPE_CHECKING:
    from pathlib import Path


__all__ = ["main"]


_ENVIRONMENT = """\
environment (read by the library in every process, and by status):
  IPCHANNEL_DIR              the runtime directory of channels on one machine (default:
                             $XDG_RUNTIME_DIR/ipchannel, else <tempdir>/ipchannel-<uid>)
  IPCHANNEL_COORDINATOR      etcd:// or redis:// URL that elects hosts across machines;
                             unset, channels are local to this machine
  IPCHANNEL_LISTEN           HOST:PORT a host listens on across machines (default 0.0.0.0:0)
  IPCHANNEL_ADVERTISE        HOST:PORT the others dial to reach it (default: the listen address;
                             for 0.0.0.0, the address this machine reaches the coordinator from)
  IPCHANNEL_SERVER_HOSTNAME  the name hosts' TLS certificates carry

exit codes: 0 success, 1 failure (status NAME: no live host), 2 bad usage
"""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "ipchannel: peer processes share one in-process service, hosted by one of them and\n"
            "taken over by another when it dies; on one machine, or across machines with etcd or Redis."
        ),
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="list the channels and their hosts (this machine's, or a coordinator's)",
        description=(
            "List the channels in the runtime directory: host pid and command line, generation, "
            "uptime, socket, and whether the host is alive; stale records are flagged. With a "
            "coordinator (--coordinator, or IPCHANNEL_COORDINATOR when --dir is not given), the "
            "channels it elects: host address, node, pid, generation, uptime, ttl left. Read-only: "
            "it never connects to a host. Exit code 1 if NAME is given and has no live host."
        ),
    )
    status.add_argument("name", nargs="?", help="only this channel")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument(
        "--dir",
        metavar="PATH",
        help=f"runtime directory (default: IPCHANNEL_DIR, else $XDG_RUNTIME_DIR/ipchannel, else "
        f"<tempdir>/ipchannel-<uid>; here {resolve_runtime_dir()})",
    )
    status.add_argument(
        "--coordinator",
        metavar="URL",
        help="the etcd:// or redis:// URL of a coordinator, with its credentials if it needs them, "
        "as the channels were given it (default: IPCHANNEL_COORDINATOR, unless --dir is given)",
    )
    demo = commands.add_parser(
        "demo",
        help="watch worker processes share a channel while its host is killed",
        description=(
            "Start worker processes sharing a ticket counter on a channel (in a temporary runtime "
            "directory), SIGKILL its host KILLS times, and print, live, each worker's tickets and "
            "which worker took over. About 6 seconds with the defaults."
        ),
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes to start (default 4)")
    demo.add_argument("--kills", type=int, default=2, help="hosts to kill, one after another (default 2)")
    return parser


def _prog() -> str:
    """Name the command as typed: ``ipchannel`` (the console script) or ``python -m ipchannel``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m ipchannel" if name in {"", "__main__.py", "-c"} else name


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return 0 on success, 1 on failure, 2 for bad usage."""
    parser = _parser(_prog())
    args = parser.parse_args(argv)
    if args.command == "status":
        return _status_command(parser, args)
    if args.command == "demo":
        from .demo import run_demo  # noqa: PLC0415 - multiprocessing only when the demo runs

        try:
            return run_demo(workers=args.workers, kills=args.kills, out=sys.stdout)
        except ChannelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 2  # unreachable: argparse rejects unknown commands with exit code 2


def _status_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.name is not None:
        try:
            validate_name(args.name)
        except ValueError as exc:
            parser.error(str(exc))
    coordinator = args.coordinator
    if coordinator is None and args.dir is None:
        coordinator = os.environ.get("IPCHANNEL_COORDINATOR") or None  # where the channels look
    try:
        if coordinator is not None:
            return _coordinator_status(coordinator, args.name, as_json=args.json, out=sys.stdout)
        directory = resolve_runtime_dir(args.dir)
        if args.dir is not None and not directory.is_dir():
            what = "does not exist" if not directory.exists() else "is not a directory"
            parser.error(f"--dir {directory} {what}")
        return _status(args.name, directory, as_json=args.json, out=sys.stdout)
    except ChannelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _status(name: str | None, directory: Path, *, as_json: bool, out: TextIO) -> int:
    from .._backends import local_status  # noqa: PLC0415 - only this command needs it

    channels = local_status(directory, name)
    if as_json:
        print(
            json.dumps({"runtime_dir": str(directory), "channels": [c.to_json() for c in channels]}), file=out
        )
    elif not channels:
        what = "no channels in" if directory.exists() else "no channels yet: nothing has used"
        print(f"{what} {directory}", file=out)
    else:
        print(f"runtime directory: {directory}", file=out)
        for c in channels:
            if c.host_pid is None:
                detail = c.problem or ("no channel of this name here" if c.state == "unknown" else "")
                print(f"{c.name}: {c.state}{f' ({detail})' if detail else ''}", file=out)
                continue
            flag = f"  STALE: {c.problem}" if c.state == "stale" else ""
            when = (
                f"up {_duration(c.uptime)}"
                if c.uptime is not None
                else f"gone (elected {_duration(c.elected or 0.0)} ago, died since)"
            )
            print(
                f"{c.name}: {c.state}, host pid {c.host_pid}, generation {c.generation}, {when}{flag}\n"
                f"    socket  {c.socket}\n"
                f"    command {_one_line(c.host_command or '?')}",
                file=out,
            )
    if name is not None:
        return 0 if channels and channels[0].state == "live" else 1
    return 0


def _coordinator_status(url: str, name: str | None, *, as_json: bool, out: TextIO) -> int:
    from .._backends import remote_status  # noqa: PLC0415 - only this command needs it

    channels = remote_status(url, name)
    if as_json:
        print(json.dumps({"coordinator": url, "channels": channels}), file=out)
    elif not channels:
        print(f"no channel has a host at {url}" if name is None else f"{name}: no host at {url}", file=out)
    else:
        print(f"coordinator: {url}", file=out)
        for c in channels:
            if c["state"] != "live":
                print(f"{c['name']}: {c['state']} ({c['problem']})", file=out)
                continue
            left = "?" if c["ttl_left"] is None else f"{c['ttl_left']:.1f}s"
            print(
                f"{c['name']}: live, host pid {c['pid']} on {c['node'] or '?'} at {c['address']}, "
                f"generation {c['generation']}, up {_duration(c['elected_seconds_ago'])}, ttl left {left}",
                file=out,
            )
    if name is not None:
        return 0 if channels and channels[0]["state"] == "live" else 1
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s"
        if hours
        else f"{minutes}m{secs:02d}s"
        if minutes
        else f"{seconds:.1f}s"
    )


def _one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
