"""Which of Runyard's packages may import which.

Every module under ``src/runyard`` is parsed with ``ast`` (never imported) and each import of
``runyard.*`` it makes is checked against ``LAYERS``: for each top-level package or module, the
top-level packages it may import. Counted: ``import runyard.x``, ``from runyard.x import y``,
``from runyard import x``, relative imports, and imports inside functions (a lazy import still
runs and ties the two packages together; it only hides the edge). Imports under
``if TYPE_CHECKING:`` count too: a type named from a layer above is a dependency on it all the
same, just one that cannot fail at import time. Imports within one package are free, and so is
``from runyard import __version__`` (the root package holds only that string).

Direction, bottom to top: ``domain`` (nothing of ours) → ``config``, ``logging``, ``protocol``,
``observability`` → ``security``, ``objects`` → ``store`` → ``context`` → ``events``,
``webhooks`` → ``services`` and ``engine`` (siblings: neither imports the other) → ``gateway``,
``schemas`` (which sits low: ``domain`` only), ``api``, ``web`` → ``app`` → ``cli``. Apart from
the server: ``client`` (the SDK), ``agent`` and ``dev`` (the fake ComfyUI) never import it,
and nothing of the server imports them.

``NARROW`` lets an edge reach only some modules of a package, ``MODULES`` holds single modules
to a tighter rule than their package. ``EXCEPTIONS`` lists today's imports that break the
direction, one line each, until the code they are in is reworked; an exception that no longer
matches an import fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = SRC / "runyard"

#: What each top-level package (or module) of ``runyard`` may import, besides itself. Derived
#: from the code and kept as tight as it allows: a new edge is a decision, made here.
LAYERS: dict[str, frozenset[str]] = {
    "runyard": frozenset(),  # src/runyard/__init__.py: the version string
    # Pure rules, settings, log set-up, the agent protocol, the loop monitor.
    "domain": frozenset(),
    "config": frozenset(),
    "logging": frozenset({"config"}),
    "protocol": frozenset({"domain"}),  # its field limits are domain.limits
    "observability": frozenset(),
    # Adapters: hashing and signing, object storage, the database.
    "security": frozenset({"config", "domain"}),
    # objects, store → security: private file modes (security/filemodes.py).
    "objects": frozenset({"config", "domain", "logging", "security"}),
    "store": frozenset({"config", "domain", "logging", "security"}),
    # What services and the engine share at run time (logging: the secret's start-up notes).
    "context": frozenset({"config", "logging", "objects", "security", "store"}),
    "events": frozenset({"context", "domain", "logging", "store"}),
    # webhooks → security: every delivery goes through the egress policy's transport.
    "webhooks": frozenset({"context", "domain", "logging", "security", "store"}),
    # Use cases, and the engine beside them: neither imports the other.
    "services": frozenset({"context", "domain", "logging", "objects", "store", "webhooks"}),
    "engine": frozenset({"config", "domain", "events", "logging", "objects", "protocol", "store"}),
    # The server's edges: wire format (low: domain only), agent gateway, HTTP API, dashboard.
    "schemas": frozenset({"domain"}),
    "gateway": frozenset({"context", "domain", "engine", "logging", "protocol", "services"}),
    "api": frozenset(
        {"context", "domain", "events", "logging", "objects", "schemas", "services", "store"}
    ),
    "web": frozenset({"context", "domain", "schemas", "services", "store"}),
    # The composition root: parts of the server, none of the other processes.
    "app": frozenset(
        {
            "api",
            "config",
            "context",
            "engine",
            "events",
            "gateway",
            "logging",
            "objects",
            "observability",
            "services",
            "store",
            "web",
            "webhooks",
        }
    ),
    # Commands: the operator ones work on the server's parts in-process, the rest use the SDK.
    "cli": frozenset(
        {
            "agent",
            "app",
            "client",
            "config",
            "context",
            "dev",
            "domain",
            "logging",
            "services",
            "store",
        }
    ),
    # Apart from the server.
    "client": frozenset({"domain"}),
    "agent": frozenset({"domain", "logging", "observability", "protocol"}),
    "dev": frozenset(),
}

#: Edges allowed to reach only these modules of the imported package.
NARROW: dict[tuple[str, str], frozenset[str]] = {
    # The row types services hand back, never queries (those stay behind the services).
    ("api", "store"): frozenset({"runyard.store.tables"}),
    ("web", "store"): frozenset({"runyard.store.tables"}),
    # Operator commands open the database and migrate it, like the server does.
    ("cli", "store"): frozenset({"runyard.store.db", "runyard.store.migrate"}),
    # The engine's storage port (its SQL and in-memory implementations stay behind it), a
    # transaction's change record, and the session type its commit listener is handed.
    ("engine", "store"): frozenset(
        {"runyard.store.port", "runyard.store.changes", "runyard.store.db"}
    ),
}

#: Single modules held to a tighter rule than their package.
MODULES: dict[str, frozenset[str]] = {
    # The engine's storage port: the engine and both implementations import it, so it
    # stays this low.
    "runyard.store.port": frozenset({"domain"}),
}

#: Today's imports against the direction, (importing module, imported module), one a line,
#: until the code they are in is reworked. None left.
EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()

#: Packages only the ``cli`` may import: other processes, kept out of the server.
APART = frozenset({"agent", "client", "dev", "cli"})


@dataclass(frozen=True)
class Edge:
    module: str  # the importing module, e.g. runyard.web.work
    line: int
    target: str  # the imported module (or package), e.g. runyard.services.tasks

    @property
    def source_layer(self) -> str:
        return layer_of(self.module)

    @property
    def target_layer(self) -> str:
        return layer_of(self.target)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, src: Path = SRC) -> tuple[str, bool]:
    """(dotted name, is a package's ``__init__``)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_module(name: str, src: Path) -> bool:
    path = src.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, src: Path = SRC) -> Iterator[Edge]:
    """The ``runyard`` imports of one file."""
    for edge in _all_imports(path, src):
        if edge.target == "runyard" or edge.target.startswith("runyard."):
            yield edge


def _all_imports(path: Path, src: Path) -> Iterator[Edge]:
    module, is_package = module_name(path, src)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):  # every level: function bodies and TYPE_CHECKING blocks too
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                # ``from runyard.store import migrate`` imports the module runyard.store.migrate.
                name = f"{origin}.{alias.name}"
                yield Edge(module, node.lineno, name if _is_module(name, src) else origin)


def all_edges() -> list[Edge]:
    edges = [edge for path in sorted(ROOT.rglob("*.py")) for edge in imports_of(path)]
    assert len(edges) > 500, "the walk found too few imports: is SRC right?"
    return edges


def breach(edge: Edge) -> str | None:
    """Why ``edge`` is not allowed, or None."""
    source, target = edge.source_layer, edge.target_layer
    if source == target or edge.target == "runyard":
        return None
    if source not in LAYERS:
        return f"{source} is not in LAYERS (say what it may import)"
    if edge.module in MODULES and target not in MODULES[edge.module]:
        allowed = ", ".join(sorted(MODULES[edge.module])) or "nothing of ours"
        return f"{edge.module} may import only {allowed}; not {target}"
    if target not in LAYERS[source]:
        allowed = ", ".join(sorted(LAYERS[source])) or "nothing of ours"
        return f"{source} may import only {allowed}; not {target}"
    narrow = NARROW.get((source, target))
    if narrow is not None and edge.target not in narrow:
        return f"{source} may import from {target} only {', '.join(sorted(narrow))}"
    return None


def test_every_import_follows_the_table() -> None:
    problems = []
    for edge in all_edges():
        reason = breach(edge)
        if reason is not None and (edge.module, edge.target) not in EXCEPTIONS:
            path = edge.module.replace(".", "/")
            problems.append(f"src/{path}.py:{edge.line} imports {edge.target}: {reason}")
    assert not problems, "imports against the layering (tests/unit/test_layers.py):\n" + (
        "\n".join(sorted(set(problems)))
    )


def test_every_exception_is_still_needed() -> None:
    breaches = {(e.module, e.target) for e in all_edges() if breach(e) is not None}
    stale = sorted(EXCEPTIONS - breaches)
    assert not stale, f"these EXCEPTIONS no longer happen; remove them: {stale}"


def test_every_package_has_a_rule() -> None:
    layers = {layer_of(module_name(p)[0]) for p in ROOT.rglob("*.py")}
    assert layers - set(LAYERS) == set()


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in LAYERS.get(todo.pop(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_the_table_points_one_way(layer: str) -> None:
    # No cycle: a layer can never reach itself through what it may import.
    assert layer not in _reachable(layer)


def test_the_other_processes_stay_apart_and_services_and_engine_are_siblings() -> None:
    server = set(LAYERS) - APART
    for layer in server:
        assert not LAYERS[layer] & APART, layer
    for layer in ("agent", "client", "dev"):
        assert LAYERS[layer] <= {"domain", "logging", "observability", "protocol"}, layer
    for a, b in (("services", "engine"), ("engine", "services")):
        assert b not in LAYERS[a]
    assert LAYERS["schemas"] == {"domain"}
    assert LAYERS["domain"] == set()


def test_a_breach_names_the_module_the_line_and_the_rule() -> None:
    edge = Edge("runyard.schemas.work", 12, "runyard.services.tasks")
    assert breach(edge) == "schemas may import only domain; not services"
    narrow = Edge("runyard.web.work", 3, "runyard.store.repos")
    assert breach(narrow) == "web may import from store only runyard.store.tables"
    assert breach(Edge("runyard.web.work", 3, "runyard.store.tables")) is None
    assert breach(Edge("runyard.web.work", 3, "runyard.web.render")) is None
    port = Edge("runyard.store.port", 9, "runyard.config")
    assert breach(port) == "runyard.store.port may import only domain; not config"


def test_relative_lazy_and_type_checking_imports_are_all_seen(tmp_path: Path) -> None:
    package = tmp_path / "runyard" / "web"
    package.mkdir(parents=True)
    (tmp_path / "runyard" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from . import page\n")
    (tmp_path / "runyard" / "store").mkdir()
    (tmp_path / "runyard" / "store" / "repos.py").write_text("")
    (package / "page.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from ..store import repos\n"
        "from runyard import app\n"
        "if TYPE_CHECKING:\n"
        "    from runyard.cli.main import x\n"
        "def handler():\n"
        "    import runyard.agent.client\n"
    )
    found = {(e.module, e.line, e.target) for e in imports_of(package / "page.py", tmp_path)}
    assert found == {
        ("runyard.web.page", 2, "runyard.store.repos"),
        ("runyard.web.page", 3, "runyard"),  # not a module here: the package itself
        ("runyard.web.page", 5, "runyard.cli.main"),
        ("runyard.web.page", 7, "runyard.agent.client"),
    }
    init = {(e.module, e.target) for e in imports_of(package / "__init__.py", tmp_path)}
    assert init == {("runyard.web", "runyard.web.page")}
    assert [breach(Edge("runyard.web.page", 5, "runyard.cli.main"))] == [
        "web may import only context, domain, schemas, services, store; not cli"
    ]
