"""Chat between terminals: start this script in two (or more) terminals and type.

    python examples/scripts/chat.py alice        # terminal 1
    python examples/scripts/chat.py bob          # terminal 2

Whichever started first hosts the channel; the others connect to it. Close the
hosting terminal (or kill it) and the chat goes on: another one takes over and
re-subscribes everyone. Ctrl-D (end of input) leaves.
"""

from __future__ import annotations

import sys

from ipchannel import RequestChannel


def main() -> int:
    """Chat as ``sys.argv[1]`` until end of input."""
    if len(sys.argv) != 2:
        print("usage: chat.py NAME", file=sys.stderr)
        return 2
    me = sys.argv[1]
    with RequestChannel("chat", on_request=None) as channel:
        channel.subscribe(lambda m: m["from"] != me and print(f"{m['from']}: {m['text']}", flush=True))
        channel.publish({"from": me, "text": "(joined)"})
        print(f"you are {me}; type a line and press Enter, Ctrl-D to leave", flush=True)
        for line in sys.stdin:
            channel.publish({"from": me, "text": line.rstrip("\n")})
        channel.publish({"from": me, "text": "(left)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
