"""The house rules of docs/DESIGN.md, read from the source: imports point down, no import
circle, every resource interface is a package with an abstract base, no long functions.

These read the code (AST), not the running program, so they fail the moment a change breaks a
rule, and name the file and line that does.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

import eventreach_assets

ROOT = Path(eventreach_assets.__file__).parent
PACKAGE = "eventreach_assets"
MAX_FUNCTION_LINES = 60

# Layer → the layers (first name under eventreach_assets) it must never import.
TOP = {"definitions", "deployments", "sensors", "schedules", "jobs", "demo", "bench", "bench_sends", "why",
       "provider_standins",
       "run_launcher"}  # fmt: skip
FORBIDDEN: dict[str, set[str]] = {
    "program": {"domain", "resources", "ingestion", "assets", "checks", "serving", "partitions"} | TOP,
    "domain": {"resources", "ingestion", "assets", "checks", "serving", "partitions"} | TOP,
    "resources": {"ingestion", "assets", "checks", "serving", "partitions"} | TOP,
    "ingestion": {"assets", "checks", "serving", "partitions"} | TOP,
    "assets": {"serving"} | TOP,
    "checks": {"serving"} | TOP,
    "serving": {"assets", "checks", "partitions"} | (TOP - {"deployments"}),
    "deployments": {"assets", "checks", "serving", "sensors", "schedules", "jobs", "definitions", "demo"},
}
# Pure layers: testable without Dagster (and without boto3, a server, a file system API).
NO_THIRD_PARTY: dict[str, set[str]] = {
    "program": {"dagster", "boto3", "botocore", "polars"},
    "domain": {"dagster", "boto3", "botocore", "starlette", "uvicorn"},
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (a module, not a name inside it)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


MODULES = {module_name(path) for path in source_files()}


def resolve(name: str) -> str:
    """The module an import statement loads: `a.b.C` is the module `a.b` when `C` is not one."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(path: Path) -> Iterator[Import]:
    """Every import in the file, at any depth (a lazy import inside a function still counts)."""
    module = module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{node.module}"
            for alias in node.names:
                target = f"{base}.{alias.name}"
                yield Import(module, target if target in MODULES else base, node.lineno)


ALL_IMPORTS = [item for path in source_files() for item in imports_of(path)]


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_imports_point_down() -> None:
    wrong = sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in ALL_IMPORTS
            if item.target.startswith(f"{PACKAGE}.") and layer(item.target) in FORBIDDEN.get(layer(item.module), set())
        }
    )
    assert not wrong, "imports that point up (see docs/DESIGN.md):\n" + "\n".join(wrong)


def test_pure_layers_import_no_framework() -> None:
    wrong = sorted(
        {
            f"{item.module}:{item.line} imports {item.target}"
            for item in ALL_IMPORTS
            if item.target.split(".")[0] in NO_THIRD_PARTY.get(layer(item.module), set())
        }
    )
    assert not wrong, "the pure layers import a framework:\n" + "\n".join(wrong)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of size > 1 (the import circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    for item in ALL_IMPORTS:
        if item.target in MODULES and item.target != item.module:
            graph.setdefault(item.module, set()).add(item.target)
    assert not strongly_connected(graph)


def test_circle_finder_finds_a_circle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


RESOURCE_PACKAGES = sorted(info.name for info in pkgutil.iter_modules([str(ROOT / "resources")]) if info.ispkg)


def test_resources_are_one_package_per_interface() -> None:
    """Plain modules under resources/ are shared plumbing only; every interface is a package."""
    plain = sorted(info.name for info in pkgutil.iter_modules([str(ROOT / "resources")]) if not info.ispkg)
    plumbing = {"aws", "dynamodb", "sqlite", "files", "s3_objects", "lazy_exports"}  # shared by several packages
    composites = {"program", "campaign_services"}  # one implementation each: the program, the clock, the bundle
    assert set(plain) <= plumbing | composites, plain
    assert len(RESOURCE_PACKAGES) >= 10, RESOURCE_PACKAGES


@pytest.mark.parametrize("package", RESOURCE_PACKAGES)
def test_each_interface_has_an_abstract_base(package: str) -> None:
    base = importlib.import_module(f"{PACKAGE}.resources.{package}.base")
    abstract = [
        cls
        for _, cls in inspect.getmembers(base, inspect.isclass)
        if cls.__module__ == base.__name__ and inspect.isabstract(cls)
    ]
    assert abstract, f"resources/{package}/base.py declares no abstract class"
    exported = importlib.import_module(f"{PACKAGE}.resources.{package}")
    assert any(getattr(exported, cls.__name__, None) is cls for cls in abstract), "the package exports its base"
    implementations = [
        value
        for value in vars(exported).values()
        if inspect.isclass(value) and not inspect.isabstract(value) and any(issubclass(value, cls) for cls in abstract)
    ]
    assert implementations, f"resources/{package} exports no implementation of its base"
    for cls in abstract:
        if issubclass(cls, dg.ConfigurableResource):
            with pytest.raises(TypeError, match="abstract"):
                cls()


def test_no_not_implemented_stubs_in_resources() -> None:
    stubs = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in (ROOT / "resources").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Raise) and node.exc is not None and "NotImplementedError" in ast.unparse(node.exc)
    ]
    assert not stubs, "an interface method should be @abc.abstractmethod:\n" + "\n".join(stubs)


def test_module_names_say_what_they_hold() -> None:
    """Outside the resource packages' backend modules, no two modules share a file name across
    layers for different things (there were four engagement.py)."""
    assert len([path for path in source_files() if path.name == "engagement.py"]) <= 1


def test_no_function_over_the_limit() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in source_files()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


# Libraries only a production resource, a model or a chart uses: a run worker of the local
# deployment imports the code location without them (8-9 s and 290 MB with them, 2.6 s and 118 MB
# without, docs/speed.md), and each is imported where it is used.
LAZY_LIBRARIES = ("dagster_aws", "dagster_snowflake", "boto3", "botocore", "sklearn", "joblib", "scipy", "matplotlib")


def test_the_code_location_imports_no_production_model_or_chart_library() -> None:
    """Importing the definitions in a fresh process leaves every library of `LAZY_LIBRARIES` out;
    then each production name still resolves (and brings its library)."""
    script = (
        "import sys, json\n"
        "import eventreach_assets.definitions\n"
        f"print(json.dumps(sorted(m for m in {LAZY_LIBRARIES!r} if m in sys.modules)))\n"
        "from eventreach_assets.resources.decision_log import S3DecisionLog\n"
        "from eventreach_assets.resources.candidate_store import GSI1, DynamoDBCandidateStore\n"
        "from eventreach_assets.resources.scoring import SageMakerScoring\n"
        "print(json.dumps([S3DecisionLog.__module__, DynamoDBCandidateStore.__module__, GSI1,\n"
        "                  SageMakerScoring.__module__, 'dagster_aws' in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    imported, resolved = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert imported == [], f"the code location imports {imported} at start-up"
    assert resolved == [
        "eventreach_assets.resources.decision_log.s3",
        "eventreach_assets.resources.candidate_store.dynamodb",
        "GSI1",
        "eventreach_assets.resources.scoring.sagemaker",
        True,
    ]


def test_a_process_loading_the_code_location_freezes_what_it_loaded_and_at_exit_all_that_is_left() -> None:
    """The collector skips the objects a run worker loads (loaded_code.py): frozen once the
    definitions are imported; objects made later are not, until the process exits."""
    script = (
        "import atexit, gc, json\n"
        "import eventreach_assets.definitions\n"
        "loaded = gc.get_freeze_count()\n"
        "made_later = [[n] for n in range(50_000)]  # lists: tracked by the collector\n"
        "later = gc.get_freeze_count()\n"
        "atexit._run_exitfuncs()\n"
        "print(json.dumps([loaded, later, gc.get_freeze_count()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    loaded, later, at_exit = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded > 50_000  # dagster's and the code location's classes, functions, definitions
    assert later == loaded  # what a run makes is collected as before
    assert at_exit >= loaded + 50_000  # exiting, the collector skips everything left


def test_a_lazy_export_that_does_not_exist_is_an_attribute_error() -> None:
    import eventreach_assets.resources.decision_log as decision_log

    with pytest.raises(AttributeError, match="has no attribute 'S4DecisionLog'"):
        _ = decision_log.S4DecisionLog
