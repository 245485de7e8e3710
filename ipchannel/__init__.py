"""ipchannel: peer processes share one in-process service, on one machine or across several.

One process is elected (file lock) to host a Unix-socket server in a daemon
thread; every process, the host included, connects to it. When the host dies,
another process takes over and the sockets reconnect by themselves. Every
process runs the same code::

    from ipchannel import RequestChannel

    def on_request(message):                  # runs in whichever process hosts
        return {"echo": message}

    channel = RequestChannel("echo", on_request)
    print(channel.request("hi", timeout=5))   # {'echo': 'hi'}, from the host

Read on:

- ``Channel``: the raw socket to the host, and the election (``join``, ``on_elected``).
- ``RequestChannel``: request/reply and publish/subscribe that survive the host's death.
- ``SharedDict``: a dict every process shares, with local reads.
- ``run_on_host``: a periodic job run by the host only.
- ``python -m ipchannel status`` (or ``ipchannel status``): what runs where.

The documentation is docs/ in the source (docs/index.rst: tutorial, how-to guides, reference,
explanation); the guarantees and the limits are in docs/explanation/guarantees.rst.
"""

from __future__ import annotations

from ._core.channel import Channel as Channel
from ._core.channel import open_channel as open_channel
from ._core.socket import ChannelSocket as ChannelSocket
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ChannelClosed as ChannelClosed
from ._errors import ChannelError as ChannelError
from ._errors import ChannelTimeout as ChannelTimeout
from ._errors import CoordinatorError as CoordinatorError
from ._errors import CoordinatorUnavailable as CoordinatorUnavailable
from ._errors import CoordinatorURLError as CoordinatorURLError
from ._errors import HostChanged as HostChanged
from ._errors import JournalError as JournalError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import RuntimeDirError as RuntimeDirError
from ._framing import recv_message as recv_message
from ._framing import send_message as send_message
from ._jobs import HostJob as HostJob
from ._jobs import run_on_host as run_on_host
from ._requests.channel import RequestChannel as RequestChannel
from ._shareddict.dict import SharedDict as SharedDict
from ._version import __version__ as __version__

__all__ = [
    "AuthenticationError",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "ChannelSocket",
    "ChannelTimeout",
    "CoordinatorError",
    "CoordinatorURLError",
    "CoordinatorUnavailable",
    "HostChanged",
    "HostJob",
    "JournalError",
    "MissingExtraError",
    "ProtocolError",
    "RemoteError",
    "RequestChannel",
    "RuntimeDirError",
    "SharedDict",
    "__version__",
    "open_channel",
    "recv_message",
    "run_on_host",
    "send_message",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__"):
        _obj.__module__ = __name__
del _name, _obj
