# ruff: noqa: INP001 - Sphinx reads this file; docs/ is no package
"""Sphinx configuration for the ipchannel documentation.

Built with warnings as errors and nitpicky references (``sphinx-build -W -n``, in ``.ci/run``
and ``tests/test_docs.py``). No intersphinx: CI reaches package registries only, so names of
the standard library and of third-party packages are listed in ``nitpick_ignore`` below, each
group with its reason. ipchannel's own names are never ignored: every one a signature shows is
documented in the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipchannel import __version__  # noqa: E402 - after the path is set

project = "ipchannel"
author = "The ipchannel developers"
copyright = "the ipchannel developers"  # noqa: A001 - Sphinx's name for it
version = release = __version__

extensions = ["sphinx.ext.autodoc"]
html_theme = "furo"
html_title = f"ipchannel {__version__}"
# The two Markdown files are pointers kept for old links; their content is in explanation/.
exclude_patterns = ["_build", "architecture.md", "replication.md"]
nitpicky = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Names imported under TYPE_CHECKING in the source, which autodoc cannot evaluate: where they live.
autodoc_type_aliases = {
    "Codec": "ipchannel._codecs.Codec",
    "Phase": "ipchannel._core.connect.Phase",
    "Operation": "ipchannel._shareddict.ops.Operation",
    "Path": "pathlib.Path",
    "Metric": "prometheus_client.Metric",
}

# External names in signatures and base classes. Without intersphinx they cannot resolve; each is
# the standard library's or a dependency's, documented there.
_STDLIB = [
    "os.PathLike",
    "pathlib.Path",
    "socket.socket",
    "socketserver.BaseRequestHandler",
    "ssl.SSLContext",
    "collections.abc.Callable",
    "collections.abc.Iterator",
    "collections.abc.Mapping",
    "collections.abc.MutableMapping",
    "collections.abc.Awaitable",
    "collections.abc.AsyncIterator",
    "ReadableBuffer",  # typeshed's _typeshed.ReadableBuffer, as socket.socket.send's own signature
    "WriteableBuffer",  # typeshed's _typeshed.WriteableBuffer, as socket.socket.recv_into's
    # The builtin bases of the exceptions (the exception tree shows them on purpose).
    "Exception",
    "TimeoutError",
    "ConnectionResetError",
    "OSError",
    "PermissionError",
    "ValueError",
    "ImportError",
]
_THIRD_PARTY = [
    "django.core.cache.backends.base.BaseCache",  # the Django cache backend's base (Django's docs)
    "limits.storage.base.Storage",  # the limits storages' bases (limits' docs)
    "limits.storage.base.MovingWindowSupport",
    "limits.storage.base.SlidingWindowCounterSupport",
    "limits.storage.base.TimestampedSlidingWindow",
    "limits.aio.storage.base.Storage",
    "limits.aio.storage.base.MovingWindowSupport",
    "limits.aio.storage.base.SlidingWindowCounterSupport",
    "prometheus_client.Metric",  # prometheus_client's types (its docs)
    "prometheus_client.registry.CollectorRegistry",
    "Metric",  # prometheus_client's Metric, imported under TYPE_CHECKING where a collector returns it
]
nitpick_ignore = [("py:class", name) for name in _STDLIB + _THIRD_PARTY] + [
    ("py:exc", name) for name in _STDLIB
]


def _drop_private_parameters(  # noqa: PLR0913, PLR0917 - the signature of Sphinx's event
    app: object, what: str, name: str, obj: object, options: object, signature: str | None, annotation: str
) -> tuple[str | None, str] | None:
    """Leave out the keyword-only parameters whose names start with ``_``: ipchannel's own wiring.

    They come last in every signature that has them (``_options``, ``_backend``, ...), and no
    caller passes them.
    """
    del app, what, name, obj, options
    if signature is None:
        return None
    cut = signature.find(", _")
    if cut == -1:
        return None
    head = signature[:cut]
    head = head.removesuffix(", *")
    return head + ")", annotation


def setup(app: Any) -> None:  # noqa: ANN401 - sphinx.application.Sphinx, not imported here
    """Register the signature hook."""
    app.connect("autodoc-process-signature", _drop_private_parameters)
