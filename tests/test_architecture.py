"""The package map of docs/ARCHITECTURE.md, checked on the source: which package may import which,
no module imports another in a circle (lazy imports inside functions count), and no repeated
contract literals outside the modules that own them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "tembed_client": ROOT / "client" / "tembed_client",
    "tembed_serving": ROOT / "serving" / "tembed_serving",
    "tembed_gateway": ROOT / "gateway" / "tembed_gateway",
    "tembed": ROOT / "export" / "tembed",
    "tembed_eval": ROOT / "evaluation" / "tembed_eval",
    "tembed_bench": ROOT / "bench" / "tembed_bench",
    "tembed_fixtures": ROOT / "devtools" / "tembed_fixtures",
}
# What each package may import (besides itself): the edges of docs/ARCHITECTURE.md.
ALLOWED = {
    "tembed_client": set(),
    "tembed_serving": {"tembed_client"},
    "tembed_gateway": {"tembed_client", "tembed_serving"},
    "tembed": {"tembed_client", "tembed_serving", "tembed_gateway"},
    # The rerank demo exports its models (tembed) from folders it builds (tembed_fixtures).
    "tembed_eval": {"tembed_client", "tembed_serving", "tembed", "tembed_fixtures"},
    "tembed_bench": {"tembed_client", "tembed_serving", "tembed_gateway", "tembed", "tembed_eval", "tembed_fixtures"},
    # Development only: nothing that serves or exports imports it.
    "tembed_fixtures": {"tembed_client", "tembed_serving", "tembed"},
}


def module_name(package: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[package]).with_suffix("")
    parts = [package, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(package: str, path: Path) -> set[str]:
    """Absolute names of every first-party module ``path`` imports, anywhere in the file."""
    mod = module_name(package, path)
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] in PACKAGES}


def all_modules() -> dict[str, set[str]]:
    graph = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            graph[module_name(package, path)] = imports(package, path)
    # Keep edges to modules only (a `from pkg import name` also lists pkg.name).
    return {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_imports_follow_the_map(package):
    bad = {
        (m, i)
        for m, deps in all_modules().items()
        if m.split(".")[0] == package
        for i in deps
        if i.split(".")[0] not in ALLOWED[package] | {package}
    }
    assert not bad, f"{package} imports outside its allowed edges: {sorted(bad)}"


def test_no_import_cycles():
    graph = all_modules()
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


# Contract literals and the code that owns them. Anywhere else they must come from the contract.
OWNED = {
    r'"input_ids"|"attention_mask"': {"serving/tembed_serving/contract.py"},
    r'"query", "document"': {"client/tembed_client/contract.py"},
    r'"bfloat16", "float16"': {"serving/tembed_serving/contract.py"},
    r'"row_options"|"row_weight_column"|"full_embedding"': {"serving/tembed_serving/contract.py"},
    r'\}-(encoder|tokenizer|postprocess)"|"1" / "model\.onnx"|"model\.plan"': {"serving/tembed_serving/contract.py"},
}
SOURCES = [
    p
    for folder in ("client/tembed_client", "serving", "gateway", "export/tembed", "evaluation", "bench")
    for p in (ROOT / folder).rglob("*.py")
    if "fixtures" not in p.parts and "build" not in p.parts
]


@pytest.mark.parametrize("pattern", sorted(OWNED))
def test_contract_literals_live_in_one_module(pattern):
    offenders = [
        str(p.relative_to(ROOT))
        for p in SOURCES
        if re.search(pattern, p.read_text(encoding="utf-8")) and str(p.relative_to(ROOT)) not in OWNED[pattern]
    ]
    assert not offenders, f"{pattern} written outside {OWNED[pattern]}: {offenders}"


def test_no_absolute_machine_paths():
    texts = [
        *SOURCES,
        *ROOT.glob("*.md"),
        *(ROOT / "docs").glob("*.md"),
        ROOT / "Makefile",
        *(ROOT / "docker").iterdir(),
    ]
    offenders = [str(p.relative_to(ROOT)) for p in texts if p.is_file() and "/work/" in p.read_text(errors="replace")]
    assert not offenders, offenders
