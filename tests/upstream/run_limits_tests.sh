#!/usr/bin/env bash
# limits' own storage tests (from its sdist on PyPI) against ipchannel:// and async+ipchannel://.
#
#   bash tests/upstream/run_limits_tests.sh [PYTHON]      (default: .venv/bin/python)
#
# PYTHON's environment has ipchannel and limits installed (pip install -e '.[test]'). The sdist of
# that limits version is downloaded (pip) into a temporary directory with its tests/; its
# tests/conftest.py, which starts docker-compose servers for the other storages, is removed, and
# tests/upstream/limits_plugin.py adds our URIs to its storage parametrization. Only the tests
# parametrized over storages run (-k ipchannel); pytest-asyncio, pytest-lazy-fixtures and flaky,
# which limits' tests need, go into a venv of their own that sees PYTHON's packages, not into
# PYTHON's. flaky runs a test marked @pytest.mark.flaky again after a failure, as limits' own runs do:
# those tests count hits seconds apart against windows of the wall clock, and fail for every storage
# when a window's edge falls between the hits (test_sliding_window_counter_stats started at second 58
# of a minute: its third hit is allowed by memory:// and ipchannel:// alike, since the previous
# window's 2 hits weigh 59/60 of 2, which floor() makes 1).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${1:-$repo/.venv/bin/python}"
version=$("$python" -c 'import limits; print(limits.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m pip download -q --no-deps --no-binary :all: "limits==$version" -d "$work" 2>/dev/null
tar -xzf "$work/limits-$version.tar.gz" -C "$work"
src="$work/limits-$version"
rm "$src/tests/conftest.py"

# the two pytest plugins limits' tests use, over PYTHON's site-packages (which ipchannel is in)
"$python" -m venv "$work/venv"
site=$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
own=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "import site; site.addsitedir('$site')" > "$own/zz-tested-environment.pth"  # and its .pth files
"$work/venv/bin/pip" install -q pytest-asyncio pytest-lazy-fixtures flaky 2>/dev/null

export IPCHANNEL_DIR="$work/run"
mkdir -m 700 "$IPCHANNEL_DIR"
cd "$src"
# limits itself from site-packages, not from the sdist's source tree (PYTHONSAFEPATH: Python 3.11+;
# on 3.10 the tree is the same version)
PYTHONSAFEPATH=1 PYTHONPATH="$here" "$work/venv/bin/python" -m pytest -p limits_plugin -p no:cacheprovider \
    -o addopts= -o asyncio_mode=auto -o asyncio_default_fixture_loop_scope=function -rfEs -q \
    -k ipchannel \
    tests/test_storage.py tests/test_strategy.py tests/aio/test_storage.py tests/aio/test_strategy.py \
    tests/integration/test_concurrency.py "${@:2}"
