"""The options of a durable SharedDict (``appendonly``, ``appendfsync``, ``journal_dir``), checked.

Named as Redis names them, and meaning the same: see ``journal`` for what the host does.
A journal lives in files on one machine, so a dict elected across machines (a coordinator)
cannot be durable this way: its next host may run where those files are not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .journal import POLICIES, Journal

if TYPE_CHECKING:
    from .._codecs import Codec
    from .._options import Options

__all__ = ["check_same", "durable_journal"]


def durable_journal(  # noqa: PLR0913, PLR0917 - the options, as SharedDict takes them
    name: str, options: Options, codec: Codec, appendonly: object, appendfsync: object, journal_dir: object
) -> Journal | None:
    """Return the journal the options ask for (None: not durable); TypeError/ValueError name a bad one."""
    if not isinstance(appendonly, bool):
        raise TypeError(f"appendonly must be True or False, not {type(appendonly).__name__}")
    if appendfsync is not None and not isinstance(appendfsync, str):
        raise TypeError(
            f"appendfsync must be one of {', '.join(map(repr, POLICIES))}, not {type(appendfsync).__name__}"
        )
    if appendfsync is not None and appendfsync not in POLICIES:
        raise ValueError(f"appendfsync must be one of {', '.join(map(repr, POLICIES))}, not {appendfsync!r}")
    if journal_dir is not None and (
        not isinstance(journal_dir, (str, os.PathLike)) or isinstance(os.fspath(journal_dir), bytes)
    ):
        raise TypeError(
            f"journal_dir must be a str or os.PathLike path, or None, not {type(journal_dir).__name__}"
        )
    if not appendonly:
        for option, value in (("appendfsync", appendfsync), ("journal_dir", journal_dir)):
            if value is not None:
                raise ValueError(f"{option} applies only with appendonly=True (a durable dict)")
        return None
    if options.coordinator is not None:
        raise ValueError(
            "appendonly keeps a SharedDict's journal in files on this machine, and with a coordinator"
            " (coordinator= or IPCHANNEL_COORDINATOR) its next host may run on another machine, which"
            " cannot read them: a durable SharedDict is for processes on one machine; across machines,"
            " keep what must outlive every process in the engine's own store (say, Redis with appendonly)"
        )
    base = options.runtime_dir if journal_dir is None else Path(os.fspath(journal_dir)).absolute()
    policy = "everysec" if appendfsync is None else appendfsync
    return Journal(name, base, create_base=journal_dir is not None, codec=codec, policy=policy)


def check_same(name: str, host: Any, mine: list[str] | None) -> None:
    """Raise ValueError unless the host journals this dict as this process would (``Store.durability``)."""
    if host == mine:
        return

    def say(durability: Any) -> str:
        if not durability:
            return "without appendonly"
        return f"appendonly, appendfsync={durability[0]!r}, journal in {durability[1]}"

    raise ValueError(
        f"SharedDict {name!r} is open {say(host)} in its host, and {say(mine)} here: every process must"
        " open a dict with the same appendonly, appendfsync and journal_dir"
    )
