"""Which backend a channel runs on, chosen here once from its options: the only module that names one.

No coordinator (``coordinator=None`` and no ``IPCHANNEL_COORDINATOR``): the backend of
one machine (``_local``): ``LocalCoordinator`` + ``UnixTransport``, with the standby and,
where the platform has pidfds, exit notices. A coordinator URL: the backend across
machines (``_remote``): ``RemoteCoordinator`` on the engine it names + ``TcpTransport``,
with neither capability. The command line's ``status`` asks here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _platform
from ._errors import ChannelError
from ._local.coordinator import FileElectionNotices, FileTermNotices, LocalCoordinator, PidExitNotices
from ._local.members import LocalMembership
from ._local.paths import ChannelPaths, ensure_runtime_dir
from ._local.standby import LocalStandby
from ._local.unix import UnixTransport
from ._remote.coordinator import RemoteCoordinator
from ._remote.engine import ENGINES
from ._remote.members import RemoteMembership
from ._remote.tcp import TcpTransport
from ._seams.base import Backend

if TYPE_CHECKING:
    from pathlib import Path

    from ._local.status import ChannelStatus
    from ._options import Options

__all__ = ["local_status", "open_backend", "remote_status"]


def open_backend(name: str, options: Options) -> Backend:
    """Return the backend for a channel's options (the local one creates the runtime directory)."""
    if options.coordinator is None:
        return _local_backend(name, options)
    return _remote_backend(name, options)


def _local_backend(name: str, options: Options) -> Backend:
    if not _platform.SUN_PATH_MAX:
        raise ChannelError("ipchannel needs Unix domain sockets and flock, which this platform lacks")
    ensure_runtime_dir(options.runtime_dir)
    paths = ChannelPaths.for_channel(name, options.runtime_dir)
    coordinator = LocalCoordinator(name, paths)
    return Backend(
        coordinator,
        UnixTransport(name, paths, options.authkey),
        standby=LocalStandby(name, paths, options.authkey, coordinator),
        exit_notices=PidExitNotices() if _platform.EXIT_NOTICES else None,
        term_notices=FileTermNotices(paths),
        election_notices=FileElectionNotices(paths),
        membership=LocalMembership(paths.members),
    )


def _remote_backend(name: str, options: Options) -> Backend:
    assert options.coordinator is not None
    assert options.authkey is not None  # required with a coordinator (checked by Options.build)

    def default_host() -> str | None:
        return coordinator.engine.local_address()  # the engine of now: a forked child makes its own

    transport = TcpTransport(
        name, options.listen, options.advertise, options.authkey, options.tls, default_host
    )
    coordinator = RemoteCoordinator(
        name, options.coordinator, options.ttl, options.runtime_dir, ENGINES, transport.reachable
    )
    return Backend(
        coordinator, transport, membership=RemoteMembership(name, lambda: coordinator.engine, options.ttl)
    )


def local_status(directory: Path, name: str | None = None) -> list[ChannelStatus]:
    """Return the status of channel ``name`` (or of every channel) in a runtime directory, read-only.

    :raises RuntimeDirError: the directory exists but is not safe to trust.
    """
    from ._local.status import channel_status, list_channels  # noqa: PLC0415 - psutil: the CLI's only

    if directory.exists():
        ensure_runtime_dir(directory)  # refuses a directory that is not safe to trust (creates nothing)
    elif name is None:
        return []  # the default directory, before any channel was used
    return [channel_status(name, directory)] if name is not None else list_channels(directory)


def remote_status(url: str, name: str | None = None) -> list[dict[str, Any]]:
    """Return the channels a coordinator engine has a host for (only ``name``, if given), read-only."""
    from ._remote.status import coordinator_status  # noqa: PLC0415 - the CLI's only

    return coordinator_status(url, name)
