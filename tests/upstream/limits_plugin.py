"""A pytest plugin that adds ``ipchannel://`` to the storage parametrization of limits' own tests.

Loaded by ``run_limits_tests.sh`` (``-p limits_plugin``) in an unpacked limits sdist, whose
``tests/conftest.py`` (docker-compose servers for Redis, Memcached, MongoDB) the script removes.
Nothing of limits is copied here: at configure time this extends the parameter lists that limits'
tests read (``tests.utils.ALL_STORAGES*`` and each ``TestConcreteStorages`` class's list) with one
entry for ``ipchannel://`` and one for ``async+ipchannel://``, each with a fixture that empties the
shared dict before the test (as limits' redis fixtures flush their server). Run with ``-k ipchannel``.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

URI = "ipchannel://limits-upstream"
_PARAMETRIZED = ("all_storage", "moving_window_storage", "sliding_window_counter_storage")


def pytest_configure(config: pytest.Config) -> None:
    """Extend limits' storage parameters before its test modules import them."""
    config.addinivalue_line("markers", "ipchannel: ipchannel.contrib.limits storages")
    # @pytest.mark.flaky: the flaky plugin, which run_limits_tests.sh installs as limits' runs do
    sys.path.insert(0, str(config.rootpath))
    lf = importlib.import_module("pytest_lazy_fixtures").lf  # a dependency of limits' tests only

    from ipchannel.contrib.limits import AsyncSharedDictStorage, SharedDictStorage  # noqa: PLC0415

    utils = importlib.import_module("tests.utils")
    sync = pytest.param(URI, {}, lf("ipchannel_limits"), marks=pytest.mark.ipchannel, id="ipchannel")
    asynchronous = pytest.param(
        "async+" + URI, {}, lf("ipchannel_limits"), marks=pytest.mark.ipchannel, id="async-ipchannel"
    )
    utils.ALL_STORAGES["ipchannel"] = sync
    utils.ALL_STORAGES_ASYNC["ipchannel"] = asynchronous
    for name in _PARAMETRIZED:
        setattr(
            utils, name, pytest.mark.parametrize(("uri", "args", "fixture"), [*utils.ALL_STORAGES.values()])
        )
        setattr(
            utils,
            "async_" + name,
            pytest.mark.parametrize(("uri", "args", "fixture"), [*utils.ALL_STORAGES_ASYNC.values()]),
        )
    for module, param in (("tests.test_storage", sync), ("tests.aio.test_storage", asynchronous)):
        _add_concrete(
            importlib.import_module(module),
            param,
            AsyncSharedDictStorage if "aio" in module else SharedDictStorage,
        )


def _add_concrete(module: Any, param: Any, storage: type) -> None:
    """Append our storage to the parameter list of the module's ``TestConcreteStorages``."""
    (mark,) = [mark for mark in module.TestConcreteStorages.pytestmark if mark.name == "parametrize"]
    uri, args, fixture = param.values
    mark.args[1].append(pytest.param(uri, args, storage, fixture, marks=param.marks, id=param.id))


@pytest.fixture
def ipchannel_limits() -> Iterator[None]:
    """An empty shared dict for each test, and every dict of this process closed after it."""
    from limits.storage import storage_from_string  # noqa: PLC0415

    from ipchannel.contrib import limits  # noqa: PLC0415

    storage = storage_from_string(URI)
    storage.reset()
    yield
    limits.close_all()
