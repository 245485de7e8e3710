"""The documentation site cannot drift from the code: it builds, and what it shows is what runs.

- ``sphinx-build -W -n`` (warnings as errors, nitpicky references) builds ``docs/``;
- every example in ``docs/examples/`` runs, and prints what the page shows (its ``.out`` file);
- no Python block is left that no test runs: a page includes its code from a file a test runs, or
  the test that runs the block is named in ``EXECUTED`` (the few that cannot run: ``NOT_RUN``);
- what ``python -m ipchannel --version`` and ``status`` print is what the pages show;
- the tutorial runs: its app under real gunicorn, ``status``, ``kill -9`` of the host, the counts;
- the reference pages list every exception, environment variable, file and help text there is.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import importlib
import importlib.util
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _http import Gunicorn, get_json
from _servers import start_etcd, start_redis
from conftest import is_member, reap, wait_until

import ipchannel
from ipchannel import _errors

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
PAGES = sorted(DOCS.rglob("*.rst"))


def _pages_text() -> str:
    return "\n".join(p.read_text() for p in PAGES if "_build" not in p.parts)


# -- the build ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_the_site_builds_with_warnings_as_errors_and_nitpicky_references(tmp_path: Path) -> None:
    missing = [name for name in ("sphinx", "furo") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install '.[docs]' (.ci/run does)")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-n", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "html" / "index.html").exists()


# -- the examples ------------------------------------------------------------------------------


def _run_example(path: Path, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _pids_hidden(output: str) -> str:
    """The output with each pid written ``pid <pid>``, as a page shows a log line (pids vary by run)."""
    return re.sub(r"\bpid \d+\b", "pid <pid>", output)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_runs_and_prints_what_its_page_shows(example: Path, runtime_dir: Path) -> None:
    expected = example.with_suffix(".out")
    assert expected.exists(), f"{expected.name}: the output the page shows"
    shown = f"examples/{example.name}"
    assert shown in _pages_text(), f"no page includes {shown}"
    result = _run_example(example, runtime_dir)
    assert result.returncode == 0, result.stderr
    assert _pids_hidden(result.stdout) == expected.read_text()


def test_every_example_file_is_tested_and_included() -> None:
    outputs = sorted((DOCS / "examples").glob("*.out"))
    assert [p.stem for p in outputs] == [p.stem for p in EXAMPLES]
    included = set(re.findall(r"literalinclude:: (?:\.\./)*examples/([\w./-]+)", _pages_text()))
    assert {f"{p.stem}.out" for p in outputs} <= included


# -- the code blocks ---------------------------------------------------------------------------

_PYTHON = {"python", "python3", "py", "pycon", "ipython"}
_DIRECTIVE = re.compile(r"\s*\.\. (?:code-block|sourcecode|code)::\s*(\S*)\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _literal_blocks(page: Path | str) -> Iterator[tuple[int, str, str]]:
    """Each literal block of a page (or a docstring): (line, language, text); ``::`` blocks have ``::``.

    A ``code-block`` (``code``, ``sourcecode``) directive, or a paragraph ending in ``::``; its text
    is what follows, indented deeper than the line that opened it (after the directive's options).
    """
    lines = (page.read_text() if isinstance(page, Path) else page).splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if not directive and not (line.rstrip().endswith("::") and not line.lstrip().startswith("..")):
            i += 1
            continue
        depth, j = _indent(line), i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j].lstrip().startswith(":")):
            if lines[j].strip() and _indent(lines[j]) <= depth:
                break
            j += 1
        body = []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > depth):
            body.append(lines[j])
            j += 1
        language = (directive.group(1) or "::") if directive else "::"
        yield i + 1, language, textwrap.dedent("\n".join(body)).strip()
        i = j


def _is_python(language: str, text: str) -> bool:
    """A block shown as Python, or a ``::`` block whose text is Python (a shell line or a diagram is not)."""
    if language in _PYTHON:
        return True
    if language != "::" or not text:
        return False
    try:
        ast.parse(text)
    except SyntaxError:
        return False
    return True


#: The modules the API page renders (automodule, autoclass :members:), with their public members.
_API_MODULES = (
    "ipchannel",
    "ipchannel.aio",
    "ipchannel.contrib.django",
    "ipchannel.contrib.limits",
    "ipchannel.contrib.prometheus",
)


def _api_docstrings() -> dict[str, str]:
    """The docstrings reference/api.rst renders: each module's and its public classes' and functions'."""
    found: dict[str, str] = {}
    for module_name in _API_MODULES:
        module = importlib.import_module(module_name)
        found[module_name] = inspect.getdoc(module) or ""
        names = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
        for name in names:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not obj.__module__.startswith("ipchannel"):  # a name it imports, documented elsewhere
                continue
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", inspect.getdoc(obj) or "")
            for member, value in vars(obj).items() if inspect.isclass(obj) else ():
                kinds = (property, classmethod, staticmethod)
                documented = inspect.isfunction(value) or isinstance(value, kinds)
                if documented and not member.startswith("_") and (doc := inspect.getdoc(value)):
                    found.setdefault(f"{obj.__module__}.{obj.__qualname__}.{member}", doc)
    return found


def _python_blocks() -> dict[tuple[str, str], str]:
    """Every Python block of the pages, the README and the API docstrings: (where, first line) -> text."""
    sources: dict[str, Path | str] = {str(p.relative_to(ROOT)): p for p in [*PAGES, ROOT / "README.rst"]}
    sources |= {f"docstring {name}": doc for name, doc in _api_docstrings().items()}
    found = {}
    for where, source in sources.items():
        for _, language, text in _literal_blocks(source):
            if _is_python(language, text):
                found[where, text.splitlines()[0]] = text
    return found


#: Python blocks a test runs as the page shows them: (page, first line) -> the test that runs it.
#: Everything else a page shows as code comes from a file a test runs (``literalinclude``).
EXECUTED = {
    ("README.rst", "from ipchannel import Channel"): (
        "test_the_readme_shows_the_tested_example_and_links_to_pages_that_exist"
    ),
    ("docs/howto/across-machines.rst", 'channel = RequestChannel("jobs", on_request,'): (
        "test_the_across_machines_channel_runs_as_the_page_shows_through_a_real_engine"
    ),
}

#: The API docstrings' examples, run each in a process of its own (``IPCHANNEL_DIR`` fresh), between
#: what they take as given (the prelude: imports, an ``on_request``) and a check (the epilogue);
#: ``async``: the block is the body of a coroutine; then what it prints.
DOCSTRING_RUNS: dict[tuple[str, str], dict[str, Any]] = {
    ("docstring ipchannel", "from ipchannel import RequestChannel"): {"out": "{'echo': 'hi'}\n"},
    (
        "docstring ipchannel.Channel",
        "def handler(conn):                  # runs in a server thread of the host process",
    ): {"prelude": "from ipchannel import Channel", "out": "b'hi'\n"},
    (
        "docstring ipchannel.RequestChannel",
        "def on_request(message):            # runs in the host process, in a handler thread",
    ): {"prelude": "from ipchannel import RequestChannel", "out": "{'echo': 'hi'}\n"},
    ("docstring ipchannel.SharedDict", 'counters = SharedDict("counters")'): {
        "prelude": "from ipchannel import SharedDict",
        "epilogue": "print(dict(counters.items()))",
        "out": "{'hits': 1, 'mode': 'fast'}\n",
    },
    ("docstring ipchannel.aio", "from ipchannel.aio import AsyncRequestChannel, AsyncSharedDict"): {
        "prelude": "def on_request(message):\n    return 1",
        "async": True,
        "epilogue": (
            "    print(reply, message, hits.get('requests'))\n"
            "    await channel.aclose()\n    await hits.aclose()"
        ),
        "out": "1 hello 1\n",
    },
    (
        "docstring ipchannel.aio.AsyncRequestChannel",
        'channel = AsyncRequestChannel("echo", on_request)   # on_request: a plain function, run in the host',
    ): {
        "prelude": (
            "from ipchannel.aio import AsyncRequestChannel\n\ndef on_request(message):\n    return message"
        ),
        "async": True,
        "out": "hi\nhello\n",
    },
    ("docstring ipchannel.aio.AsyncSharedDict", 'hits = AsyncSharedDict("hits")     # opens nothing yet'): {
        "prelude": "from ipchannel.aio import AsyncSharedDict",
        "async": True,
        "out": "",
    },
    (
        "docstring ipchannel.contrib.django",
        'CACHES = {"default": {"BACKEND": "ipchannel.contrib.django.SharedDictCache",',
    ): {
        "epilogue": (
            "import django\nfrom django.conf import settings\nsettings.configure(CACHES=CACHES)\n"
            "django.setup()\nfrom django.core.cache import cache\ncache.set('greeting', 'hello')\n"
            "print(cache.get('greeting'), cache.shared.channel.name)"
        ),
        "out": "hello myproject-cache\n",
    },
    (
        "docstring ipchannel.contrib.limits",
        "import ipchannel.contrib.limits  # registers the schemes ipchannel:// and async+ipchannel://",
    ): {
        "prelude": (
            "from flask import Flask\nfrom flask_limiter import Limiter\n"
            "from flask_limiter.util import get_remote_address\napp = Flask(__name__)"
        ),
        "epilogue": "print(type(limiter.storage).__name__)",
        "out": "SharedDictStorage\n",
    },
    ("docstring ipchannel.contrib.prometheus", "from ipchannel.contrib import prometheus"): {
        "prelude": "import prometheus_client",
        "epilogue": (
            "REQUESTS.inc()\nscrape = prometheus_client.generate_latest().decode().splitlines()\n"
            "print([line for line in scrape if line.startswith('requests_total')])"
        ),
        "out": "['requests_total 1.0']\n",
    },
    ("docstring ipchannel.contrib.prometheus.SharedCollector", "registry = CollectorRegistry()"): {
        "prelude": (
            "from prometheus_client import CollectorRegistry, Counter, generate_latest\n"
            "from ipchannel.contrib import prometheus\nprometheus.enable('collector')\n"
            "Counter('jobs', 'Jobs done').inc()"
        ),
        "epilogue": (
            "scrape = generate_latest(registry).decode().splitlines()\n"
            "print([line for line in scrape if line.startswith('jobs_total')])"
        ),
        "out": "['jobs_total 1.0']\n",
    },
}


def _docstring_script(code: str, run: dict[str, Any]) -> str:
    if run.get("async"):
        code = f"import asyncio\n\n\nasync def main():\n{textwrap.indent(code, '    ')}\n"
        code += f"{run.get('epilogue', '')}\n\n\nasyncio.run(main())\n"
        return f"{run.get('prelude', '')}\n{code}"
    return f"{run.get('prelude', '')}\n{code}\n{run.get('epilogue', '')}\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", list(DOCSTRING_RUNS), ids=[k[0].split()[-1] for k in DOCSTRING_RUNS])
def test_each_api_docstring_example_runs(key: tuple[str, str], runtime_dir: Path) -> None:
    run = DOCSTRING_RUNS[key]
    script = _docstring_script(_block(*key), run)
    env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50, check=False
    )
    assert result.returncode == 0, f"{script}\n{result.stderr}"
    assert result.stdout == run["out"], script


EXECUTED |= dict.fromkeys(DOCSTRING_RUNS, "test_each_api_docstring_example_runs")


#: Python blocks that no test runs, each with why. Keep it short: a block belongs here only if it
#: cannot run as shown and no example file can show it instead.
NOT_RUN: dict[tuple[str, str], str] = {}


def _block(page: str, first_line: str) -> str:
    assert (page, first_line) in EXECUTED, "name the test that runs it in EXECUTED"
    return _python_blocks()[page, first_line]


def test_every_python_block_of_the_docs_is_run_by_a_test_or_allowed_with_a_reason() -> None:
    blocks = _python_blocks()
    unrun = sorted(set(blocks) - set(EXECUTED) - set(NOT_RUN))
    assert unrun == [], (
        "Python blocks no test runs: show a file a test runs (literalinclude; a new example in "
        "docs/examples/ is run by test_each_example_runs_and_prints_what_its_page_shows), or run "
        "the block in a test and name that test in EXECUTED"
    )
    assert sorted((set(EXECUTED) | set(NOT_RUN)) - set(blocks)) == [], "listed, but no page shows it"
    assert set(EXECUTED) & set(NOT_RUN) == set()
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    assert set(EXECUTED.values()) <= tests
    assert all(reason.strip() for reason in NOT_RUN.values())
    # a doctest block (">>> ") needs no "::", and nothing here runs one (no sphinx.ext.doctest)
    texts = [p.read_text() for p in [*PAGES, ROOT / "README.rst"]] + list(_api_docstrings().values())
    assert [line for text in texts for line in text.splitlines() if line.lstrip().startswith(">>>")] == []


def test_every_file_a_page_includes_from_examples_is_one_a_test_runs() -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    included = set()
    for page in PAGES:
        for target in re.findall(r"literalinclude:: (\S+)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.exists(), (page, target)
            if path.is_relative_to(ROOT / "examples"):
                included.add(path.relative_to(ROOT / "examples").parts[0])
    assert included  # the gunicorn, Django, uvicorn and Prometheus examples
    # a test starts it by its directory's name: Gunicorn("gunicorn_counter", ...), examples/...
    assert {d for d in included if f'"{d}"' not in tests and f"examples/{d}" not in tests} == set()


def _engine(kind: str, tmp_path: Path) -> Any:
    """A real engine of its own. On a Redis up for less than a ttl the first claim holds off for the
    rest of it (``RedisEngine._hold``): the page's ``ttl=5.0`` makes that test last about 5 s."""
    return start_etcd(tmp_path, aged=True) if kind == "etcd" else start_redis(tmp_path)


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("runtime_dir")
@pytest.mark.parametrize("engine", ["etcd", "redis"])
def test_the_across_machines_channel_runs_as_the_page_shows_through_a_real_engine(
    engine: str, tmp_path: Path
) -> None:
    code = _block("docs/howto/across-machines.rst", 'channel = RequestChannel("jobs", on_request,')
    assert '"etcd://10.0.0.5:2379"' in code
    server = _engine(engine, tmp_path)
    try:
        # the page's block, with this test's engine for the page's 10.0.0.5 ("redis://..." works the same)
        namespace: dict[str, Any] = {
            "RequestChannel": ipchannel.RequestChannel,
            "on_request": lambda message: {"echo": message},
            "key": b"k" * 32,
        }
        exec(compile(code.replace('"etcd://10.0.0.5:2379"', repr(server.url)), "page", "exec"), namespace)  # noqa: S102
        channel = namespace["channel"]
        try:
            assert channel.request("across", timeout=30) == {"echo": "across"}
            assert channel.channel.is_host
            assert channel.channel.generation >= 1
        finally:
            channel.close()
    finally:
        server.stop()


# -- the tutorial ------------------------------------------------------------------------------


@pytest.fixture
def tutorial(runtime_dir: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(
        "../docs/examples/tutorial", "counter:app", "gunicorn.conf.py", runtime_dir, bind="TUTORIAL_BIND"
    )
    try:
        yield server
    finally:
        server.kill_all()


def _count(address: str) -> dict[str, Any] | None:
    try:
        status, body = get_json(address, "/", timeout=2.0)
    except (OSError, http.client.HTTPException):
        return None  # the killed worker's own connection, or a worker not yet accepting
    return body if status == 200 else None


def _status(runtime_dir: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
    return subprocess.run(
        [sys.executable, "-m", "ipchannel", "status", name],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def _shown_output(page: Path, command: str) -> list[str]:
    """What a page's console blocks show after ``$ command``, up to the next prompt: one list per run."""
    shown = []
    for _, language, text in _literal_blocks(page):
        lines = text.splitlines()
        if language not in {"console", "::"} or f"$ {command}" not in lines:
            continue
        after = lines[lines.index(f"$ {command}") + 1 :]
        end = next((i for i, line in enumerate(after) if line.startswith("$ ")), len(after))
        shown.append("\n".join(after[:end]))
    return shown


_UPTIME = r"(?:\d+h\d\dm\d\ds|\d+m\d\ds|\d+\.\ds)"  # as _cli.main._duration writes it


def _status_shape(output: str, runtime_dir: str) -> str:
    """``status`` output with what varies (directory, channel, pid, generation, uptime, command) named."""
    text = output.replace(runtime_dir, "DIR")
    text = re.sub(
        rf"^[\w.-]+: live, host pid \d+, generation \d+, up {_UPTIME}$",
        "NAME: live, host pid N, generation N, up T",
        text,
        flags=re.MULTILINE,
    )
    text = re.sub(r"^    socket  DIR/[\w.-]+\.sock$", "    socket  DIR/NAME.sock", text, flags=re.MULTILINE)
    return re.sub(r"^    command \S.*$", "    command CMD", text, flags=re.MULTILINE)


def test_the_version_the_tutorial_shows_is_what_the_command_prints() -> None:
    (shown,) = _shown_output(DOCS / "tutorial.rst", "python -m ipchannel --version")
    assert _help("--version").strip() == f"python -m ipchannel {ipchannel.__version__}" == shown


@pytest.mark.timeout(120)
def test_the_tutorial_counts_on_after_kill_9_of_the_host(tutorial: Gunicorn, runtime_dir: Path) -> None:
    page = (DOCS / "tutorial.rst").read_text()
    shown = [int(n) for n in re.findall(r'\{"count": (\d+),', page)]
    assert shown == [1, 2, 3, 4, 5, 6]

    before = [wait_until(lambda: _count(tutorial.address), timeout=10) for _ in range(3)]
    assert [b["count"] for b in before] == shown[:3]
    (host,) = {b["host"] for b in before}
    assert host in tutorial.workers()
    status = _status(runtime_dir, "tutorial-hits")
    assert status.returncode == 0, status.stderr
    assert f"tutorial-hits: live, host pid {host}, generation 1," in status.stdout
    assert "tutorial-hits: live, host pid 5804, generation 1," in page
    # what the pages show ``status`` print (the tutorial's two, the status page's) is what it prints
    shape = _status_shape(status.stdout, str(runtime_dir))
    assert "NAME: live, host pid N, generation N, up T" in shape, status.stdout
    pages_show = [
        *_shown_output(DOCS / "tutorial.rst", "python -m ipchannel status"),
        *_shown_output(DOCS / "tutorial.rst", "python -m ipchannel status tutorial-hits"),
        *_shown_output(DOCS / "howto" / "status.rst", "python -m ipchannel status"),
    ]
    assert len(pages_show) == 3
    assert [_status_shape(s, "/run/user/1000/ipchannel") for s in pages_show] == [shape.strip()] * 3

    # every worker opened the dict as it booted; the page's kill comes once each holds the counter
    # (a worker still opening it holds nothing yet: killing the host then would lose what only it had)
    wait_until(
        lambda: all(is_member(runtime_dir, pid, "tutorial-hits") for pid in tutorial.workers()), timeout=10
    )
    os.kill(host, signal.SIGKILL)
    after = [wait_until(lambda: _count(tutorial.address), timeout=10, interval=0.01) for _ in range(3)]
    assert [a["count"] for a in after] == shown[3:]  # no acknowledged write lost
    (new_host,) = {a["host"] for a in after}
    assert new_host not in {None, host}
    status = _status(runtime_dir, "tutorial-hits")
    assert status.returncode == 0, status.stderr
    assert f"tutorial-hits: live, host pid {new_host}, generation 2," in status.stdout
    assert "tutorial-hits: live, host pid 5809, generation 2," in page

    err = tutorial.stop()
    assert tutorial.process.returncode == 0, err
    assert "Traceback" not in err, err
    # "only the lock files stay" (the page)
    assert sorted(p.name for p in runtime_dir.iterdir() if not p.name.endswith(".lock")) == []


# -- the reference pages -----------------------------------------------------------------------


def test_the_exception_page_lists_every_exception_with_its_bases() -> None:
    page = (DOCS / "reference" / "exceptions.rst").read_text()
    tree = {m.group(1): m.group(2) or "" for m in re.finditer(r"[├└]── (\w+)\s+(?:\(also (\w+)\))?", page)}
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        assert f".. autoexception:: ipchannel.{name}\n" in page, name
        assert getattr(ipchannel, name) is cls, f"{name} is not exported by ipchannel"
        if cls is _errors.ChannelError:
            continue
        assert name in tree, f"{name} is not in the tree"
        builtin = [b.__name__ for b in cls.__bases__ if not issubclass(b, _errors.ChannelError)]
        ours = [b.__name__ for b in cls.__bases__ if issubclass(b, _errors.ChannelError)]
        if ours[0] != "ChannelError":  # a second-level one: ChannelTimeout is the other base
            builtin += ours[1:]
        assert tree[name] == "".join(builtin), (name, tree[name], builtin)
    assert set(tree) == set(_errors.__all__) - {"ChannelError"}


def test_the_environment_page_names_every_variable_the_library_reads() -> None:
    source = "\n".join(p.read_text() for p in Path(ipchannel.__file__).parent.rglob("*.py"))
    read = set(re.findall(r"\"(IPCHANNEL_[A-Z_]+)\"", source))
    assert {"IPCHANNEL_DIR", "IPCHANNEL_COORDINATOR"} <= read
    page = (DOCS / "reference" / "environment.rst").read_text()
    assert {name for name in read if f"``{name}``" not in page} == set()


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "IPCHANNEL_DIR": "/run/user/1000/ipchannel"}
    result = subprocess.run(
        [sys.executable, "-m", "ipchannel", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    return result.stdout


@pytest.mark.parametrize(
    ("page", "args"), [("help", ["--help"]), ("status", ["status", "--help"]), ("demo", ["demo", "--help"])]
)
def test_the_cli_page_shows_the_commands_own_help(page: str, args: list[str]) -> None:
    shown = (DOCS / "reference" / "cli" / f"{page}.txt").read_text()
    assert " ".join(_help(*args).split()) == " ".join(shown.split())  # wrapping may differ by Python


_PROBE = """
import sys
from ipchannel import SharedDict
d = SharedDict("probe", appendonly=True)
d["x"] = 1
print("ready", flush=True)
sys.stdin.read()
d.close()
"""


@pytest.fixture
def probes(runtime_dir: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    env = {**os.environ, "IPCHANNEL_DIR": str(runtime_dir)}
    try:
        for _ in range(2):  # a host and a replica, which stands by
            proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            started.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(OSError):
                proc.kill()
            reap(proc.pid, timeout=1)
            proc.wait(5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def _pattern(name: str, pids: set[int]) -> str:
    """A file's name as the page writes it: the channel as NAME, a pid as <pid>, a number as <N>."""
    name = name.replace("probe", "NAME")
    for pid in pids:
        name = name.replace(str(pid), "<pid>")
    return re.sub(r"(log|snapshot)\.\d+", r"\1.<N>", name)


@pytest.mark.timeout(60)
def test_the_files_page_names_every_file_in_the_runtime_directory(
    probes: list[subprocess.Popen[str]], runtime_dir: Path
) -> None:
    wait_until((runtime_dir / "probe.standby").exists, timeout=10)
    wait_until((runtime_dir / ".probe.members").exists, timeout=10)
    pids = {p.pid for p in probes}
    names = {_pattern(str(p.relative_to(runtime_dir)), pids) for p in runtime_dir.rglob("*")}
    expected = {
        "NAME.lock", "NAME.host", "NAME.sock", "NAME.standby", ".NAME.standby.lock",
        ".NAME_<pid>.sock", ".NAME.<pid>.sock", ".NAME.members", ".NAME.members.lock",
        "NAME.journal", "NAME.journal/lock", "NAME.journal/log.<N>",
    }  # fmt: skip
    assert expected <= names, expected - names
    page = (DOCS / "reference" / "files.rst").read_text()
    undocumented = {n for n in names if f"``{n.rsplit('/', 1)[-1]}" not in page and f"``{n}/``" not in page}
    assert undocumented == set()


# -- the README, the landing page --------------------------------------------------------------


def test_the_readme_shows_the_tested_example_and_links_to_pages_that_exist() -> None:
    readme = (ROOT / "README.rst").read_text()
    example = (DOCS / "examples" / "quickstart.py").read_text().splitlines()[5:]
    shown = [line.strip() for line in example if line.strip() and line != "channel.close()"]
    readme_lines = {" ".join(line.split()) for line in readme.splitlines()}
    assert [line for line in shown if " ".join(line.split()) not in readme_lines] == []
    # the test command CI runs, verbatim, and the demo
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -q '.[test]' && .venv/bin/python -m pytest" in readme
    )
    assert ".venv/bin/pip install -q . && .venv/bin/python -m ipchannel demo" in readme
    links = re.findall(r"<((?:docs/|CHANGELOG)[^>]*)>`_", readme)
    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []
    assert len(readme.splitlines()) <= 160
