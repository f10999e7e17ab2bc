"""The agent without the server's packages (``pip install runyard[agent]`` on a GPU machine).

Each process here runs the ``runyard`` console entry point (as installed: ``importlib.metadata``)
behind an import blocker that makes this environment look like the base install: every package
that ``runyard``'s base requirements do not bring (transitively) is missing. An import of a
server-only package is also recorded, so one that is caught still fails the test; a package
the base install lacks but the code needs (click once came only with uvicorn) breaks the
command, as it would on a GPU machine.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import runyard_env
from tests.e2e.stack import EMAIL, PASSWORD, SIM_GRAPH, SIM_PARAMETERS, start_server, stop

#: What only ``runyard[server]`` installs, and our own server-side packages: importing any of
#: them, even in a ``try``, fails the tests.
SERVER_ONLY = (
    "fastapi",
    "fastapi_offline",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "boto3",
    "botocore",
    "s3transfer",
    "jinja2",
    "argon2",
    "jwt",
    "cryptography",
    "email_validator",
    "aiohttp",
    "runyard.app",
    "runyard.context",
    "runyard.api",
    "runyard.web",
    "runyard.store",
    "runyard.services",
    "runyard.gateway",
    "runyard.engine",
    "runyard.events",
    "runyard.objects",
    "runyard.security",
    "runyard.webhooks",
    "runyard.dev",
)

#: ``python LAUNCHER entry ARGS…`` runs the ``runyard`` entry point with ARGS;
#: ``python LAUNCHER import MODULE`` imports MODULE. Either way the modules of $BLOCKED_SERVER
#: and $BLOCKED_OTHER fail to import as if not installed; the first are written to $BLOCKED_LOG.
LAUNCHER = """
import importlib.abc, os, sys

SERVER = tuple(os.environ["BLOCKED_SERVER"].split(","))
OTHER = frozenset(os.environ["BLOCKED_OTHER"].split(","))
LOG = os.environ["BLOCKED_LOG"]
already = sorted(m for m in sys.modules if m.startswith(SERVER))
if already:
    sys.exit(f"imported before the blocker was installed: {already}")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == b or fullname.startswith(b + ".") for b in SERVER):
            with open(LOG, "a") as log:
                log.write(fullname + "\\n")
        elif fullname.partition(".")[0] not in OTHER:
            return None
        raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)


sys.meta_path.insert(0, Blocker())
mode, args = sys.argv[1], sys.argv[2:]
if mode == "import":
    import importlib
    importlib.import_module(args[0])
else:
    from importlib.metadata import entry_points
    (entry,) = entry_points(group="console_scripts", name="runyard")
    sys.argv = ["runyard", *args]
    sys.exit(entry.load()())
"""


@functools.cache
def base_distributions() -> frozenset[str]:
    """``runyard`` and everything its base requirements (no extra) install, transitively."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [("runyard", frozenset())]
    while todo:
        item = todo.pop()
        if item in found:
            continue
        found.add(item)
        name, extras = item
        try:
            declared = requires(name) or []
        except PackageNotFoundError:  # e.g. a backport for older Pythons, not installed here
            continue
        for line in declared:
            req = Requirement(line)
            if req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            ):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(name for name, _extras in found)


@functools.cache
def not_in_the_base_install() -> frozenset[str]:
    """Top-level modules installed here by distributions the base install does not bring."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    base = base_distributions()
    return frozenset(
        module
        for module, owners in packages_distributions().items()
        if module != "runyard" and not {canonicalize_name(d) for d in owners} & base
    )


class Blocked:
    """Runs processes behind the blocker; :meth:`attempts` lists the server-only modules they
    tried to import."""

    def __init__(self, tmp_path: Path) -> None:
        self.launcher = tmp_path / "blocked_launcher.py"
        self.launcher.write_text(LAUNCHER)
        self.log = tmp_path / "blocked.log"
        self.log.touch()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            BLOCKED_SERVER=",".join(SERVER_ONLY),
            BLOCKED_OTHER=",".join(sorted(not_in_the_base_install())),
            BLOCKED_LOG=str(self.log),
        )
        return {k: v for k, v in env.items() if not k.startswith("RUNYARD_AGENT")}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.launcher), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), env=self.env(), capture_output=True, text=True, timeout=60
        )

    def attempts(self) -> list[str]:
        return self.log.read_text().split()


@pytest.fixture
def blocked(tmp_path: Path) -> Blocked:
    return Blocked(tmp_path)


def test_the_agent_and_the_user_commands_need_no_server_package(blocked: Blocked) -> None:
    imported = blocked.run("import", "runyard.agent.main")
    assert imported.returncode == 0, imported.stderr
    for args in (["--help"], ["agent", "--help"], ["login", "--help"], ["run", "--help"]):
        result = blocked.run("entry", *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    # The agent's code itself, not only its help: both runners' --check.
    simulated = blocked.run("entry", "agent", "--simulate", "--check", "--labels", "a")
    assert simulated.returncode == 0, simulated.stderr
    assert "labels:    a" in simulated.stdout
    comfyui = blocked.run("entry", "agent", "--check", "--comfyui-url", "http://127.0.0.1:9")
    assert comfyui.returncode == 1, comfyui.stderr  # nothing answers there
    assert "answers:   no" in comfyui.stdout
    assert blocked.attempts() == []


def test_the_blocker_hides_what_the_base_install_lacks(blocked: Blocked) -> None:
    """Without this, the test above could pass with a blocker that blocks nothing."""
    assert {"fastapi", "sqlalchemy", "boto3", "pytest", "uvicorn"} <= not_in_the_base_install()
    assert not {"httpx", "websockets", "pydantic", "yaml", "typer", "click"} & (
        not_in_the_base_install()
    )
    result = blocked.run("import", "runyard.app")
    assert result.returncode != 0
    assert "(blocked)" in result.stderr
    assert blocked.attempts()
    result = blocked.run("import", "moto")  # a test dependency, not a server one
    assert "No module named 'moto' (blocked)" in result.stderr


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["server", "--port", "9"], "fastapi, uvicorn, sqlalchemy"),
        (["up", "--port", "9"], "fastapi, uvicorn, sqlalchemy"),
        (["db", "upgrade"], "fastapi, uvicorn, sqlalchemy"),
        (
            ["admin", "bootstrap", "--email", "a@b.c", "--password", "p" * 12, "--team-name", "T"],
            "fastapi, uvicorn, sqlalchemy",
        ),
        (["dev", "fake-comfyui", "--port", "9"], "(missing: aiohttp)"),
    ],
)
def test_server_commands_without_the_server_packages_name_the_extra(
    blocked: Blocked, args: list[str], missing: str
) -> None:
    result = blocked.run("entry", *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: this command needs the server's packages"), line
    assert missing in line and line.endswith("pip install 'runyard[server]'"), line
    command = args[:1] if args[0] in ("server", "up") else args[:2]
    helped = blocked.run("entry", *command, "--help")  # its help still works
    assert helped.returncode == 0, helped.stderr
    assert "Usage: runyard" in helped.stdout


def test_the_server_check_knows_every_package_of_the_server_extra() -> None:
    """A package added to ``runyard[server]`` but not to ``SERVER_MODULES`` would be a traceback
    again for whoever lacks it."""
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from runyard.cli.main import SERVER_MODULES

    extra = {
        canonicalize_name(req.name)
        for req in map(Requirement, requires("runyard") or [])
        if req.marker is not None and req.marker.evaluate({"extra": "server"})
    }
    assert {"fastapi", "sqlalchemy", "boto3"} <= extra
    modules: dict[str, set[str]] = {}
    for module, owners in packages_distributions().items():
        for owner in owners:
            modules.setdefault(canonicalize_name(owner), set()).add(module)
    unchecked = {
        dist
        for dist in extra - {"aiohttp"}  # only `dev fake-comfyui`, which checks it alone
        if not modules.get(dist, set()) & set(SERVER_MODULES)
    }
    assert unchecked == set()


@pytest.mark.parametrize("backend", ["sqlite"])  # the agent's imports do not depend on the database
def test_an_agent_without_the_server_packages_completes_a_task(
    blocked: Blocked, db_url: str, tmp_path: Path
) -> None:
    from runyard.client import Runyard

    env = runyard_env(db_url)
    url, server = start_server(env, tmp_path)
    agent: subprocess.Popen[bytes] | None = None
    agent_log = tmp_path / "agent.log"
    try:
        with Runyard(url, email=EMAIL, password=PASSWORD) as owner:
            owner.login()
            agent_key = owner.create_key("light agent", kind="agent").raw_key
            owner.import_workflow(SIM_GRAPH, slug="sim", parameters=SIM_PARAMETERS)
            sk = owner.create_key("e2e").raw_key
        with agent_log.open("wb") as out:
            agent = subprocess.Popen(
                blocked.argv(
                    "entry",
                    "agent",
                    "--simulate",
                    "--gateway",
                    url,
                    "--agent-id",
                    "light",
                    "--grace",
                    "1",
                ),
                env={**blocked.env(env), "RUNYARD_AGENT_KEY": agent_key},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        with Runyard(url, api_key=sk) as client:
            deadline = time.monotonic() + 20
            while not any(
                a.agent_id == "light" and a.agent_status != "offline" for a in client.list_agents()
            ):
                assert agent.poll() is None, agent_log.read_text()
                assert time.monotonic() < deadline, agent_log.read_text()
                time.sleep(0.05)
            task = client.run("sim", {"simulate_seconds": 0.1}, wait=True, timeout=30)
            assert task.ok, task
            assert task.agent_id == "light"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0, agent_log.read_text()
        assert blocked.attempts() == [], agent_log.read_text()
    finally:
        if agent is not None:
            stop(agent)
        stop(server)
