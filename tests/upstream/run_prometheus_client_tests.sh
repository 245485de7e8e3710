#!/bin/sh
# prometheus_client's own multiprocess tests (tests/test_multiprocess.py of its sdist, the version
# installed) against ipchannel.contrib.prometheus: see prometheus_client_plugin.py for how, and
# which tests do not apply. PROMETHEUS_CLIENT_SDIST=path.tar.gz uses that sdist instead of
# downloading it; the first argument (or PYTHON) picks the interpreter (default: python).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-${PYTHON:-python}}
case $python in */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;; esac
version=$("$python" -c 'from importlib.metadata import version; print(version("prometheus_client"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${PROMETHEUS_CLIENT_SDIST:-}" ]; then
    cp "$PROMETHEUS_CLIENT_SDIST" "$work/"
else
    "$python" -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "prometheus_client==$version"
fi
tar -xzf "$work"/prometheus_client-*.tar.gz -C "$work"
cd "$work/prometheus_client-$version"
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -p prometheus_client_plugin \
    -p no:cacheprovider -q -rs tests/test_multiprocess.py
