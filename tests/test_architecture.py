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
    "tembed_retrieval": ROOT / "retrieval" / "tembed_retrieval",
}
# What each package may import (besides itself): the edges of docs/ARCHITECTURE.md.
ALLOWED = {
    "tembed_client": set(),
    "tembed_serving": {"tembed_client"},
    "tembed_gateway": {"tembed_client", "tembed_serving"},
    "tembed": {"tembed_client", "tembed_serving", "tembed_gateway"},
    # The rerank demo exports its models (tembed) from folders it builds (tembed_fixtures).
    "tembed_eval": {"tembed_client", "tembed_serving", "tembed", "tembed_fixtures", "tembed_retrieval"},
    "tembed_bench": {
        "tembed_client",
        "tembed_serving",
        "tembed_gateway",
        "tembed",
        "tembed_eval",
        "tembed_fixtures",
        "tembed_retrieval",
    },
    # Development only: nothing that serves or exports imports it.
    "tembed_fixtures": {"tembed_client", "tembed_serving", "tembed"},
    # Retrieval talks to served models through the client only (gRPC or the gateway's HTTP API).
    "tembed_retrieval": {"tembed_client"},
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
    for folder in ("client/tembed_client", "serving", "gateway", "export/tembed", "evaluation", "bench", "retrieval")
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


# --- one reader of error text, one home for each option and default ---------------------------------

SERVING_PATH = [
    p
    for folder in (
        "client/tembed_client",
        "serving",
        "gateway",
        "export/tembed",
        "evaluation",
        "bench",
        "devtools",
        "retrieval",
    )
    for p in (ROOT / folder).rglob("*.py")
    if "build" not in p.parts
]
CLASSIFIER = "client/tembed_client/errors.py"  # errors.classify: the one place Triton's prose is matched
TAG_READER = "client/tembed_client/contract.py"  # contract.read_error_tag: the serving side's own tag


def strings(tree: ast.AST) -> list[ast.Constant]:
    """The string constants of ``tree`` that are values, not docstrings."""
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def mentions_message(node: ast.AST) -> bool:
    """An expression that reads an error's text: ``exc.message``, ``message``, ``str(exc)``, ``exc.message()``."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in ("message", "msg"):
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "message":
            return True
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "str" and sub.args:
            arg = sub.args[0]
            if isinstance(arg, ast.Name) and arg.id in ("exc", "e", "err", "error"):
                return True
    return False


def matches_text(tree: ast.AST) -> list[int]:
    """Lines where a string literal is searched for in an error's text (``"queue" in exc.message``,
    ``message.startswith("dimensions")``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            left_is_literal = isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)
            if left_is_literal and any(mentions_message(c) for c in node.comparators):
                lines.append(node.lineno)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith", "find", "rfind", "index")
            and mentions_message(node.func.value)
            and any(isinstance(a, ast.Constant) for a in node.args)
        ):
            lines.append(node.lineno)
    return lines


def test_error_text_is_matched_only_by_the_classifier():
    """What an error means travels as its reason (contract.REASONS): only the client's classify() reads
    Triton's prose, and only the contract reads the serving side's tag. Everything else reads
    ``EmbeddingError.reason``: rewording a message can change no status."""
    offenders = {}
    for path in SERVING_PATH:
        rel = str(path.relative_to(ROOT))
        if rel in (CLASSIFIER, TAG_READER):
            continue
        found = matches_text(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            offenders[rel] = found
    assert not offenders, f"error text matched outside {CLASSIFIER}: {offenders}"
    # The check sees what it looks for: the classifier itself does match text.
    assert matches_text(ast.parse((ROOT / CLASSIFIER).read_text(encoding="utf-8")))


def test_option_names_and_values_live_in_the_contract():
    """Each request option is declared once (contract.OPTIONS): its name and its values are written
    nowhere else as strings; code refers to the contract's constants."""
    from tembed_client import contract as c

    owned = {o.name for o in c.OPTIONS.values()} | set(c.TRUNCATE_VALUES) | {c.DEFAULT_URL}
    offenders = sorted(
        (str(p.relative_to(ROOT)), n.lineno, n.value)
        for p in SERVING_PATH
        if str(p.relative_to(ROOT)) != TAG_READER
        for n in strings(ast.parse(p.read_text(encoding="utf-8")))
        if n.value in owned
    )
    assert not offenders, offenders


# Defaults that live in one dataclass each: (name of the field, parameter or CLI flag) -> the module.
DEFAULTS = {
    "max_texts": "serving/tembed_serving/profile.py",
    "ids_dtype": "serving/tembed_serving/profile.py",
    "torch_dtype": "export/tembed/repository.py",
    "max_inputs": "gateway/tembed_gateway/settings.py",
    "max_body_bytes": "gateway/tembed_gateway/settings.py",
    "max_in_flight": "gateway/tembed_gateway/settings.py",
    "timeout_s": "gateway/tembed_gateway/settings.py",
    "gateway_port": "gateway/tembed_gateway/settings.py",
}


def literal_defaults(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of every literal default given to a name of DEFAULTS: a dataclass field or a
    parameter default, or an ``add_argument("--name", default=...)``."""
    found = []
    for node in ast.walk(tree):
        named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in DEFAULTS
        if named and isinstance(node.value, (ast.Constant, ast.BinOp)):
            found.append((node.target.id, node.lineno))
        if isinstance(node, ast.arguments):
            args = [*node.posonlyargs, *node.args]
            pairs = list(zip(args[len(args) - len(node.defaults) :], node.defaults))
            pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
            found += [(a.arg, d.lineno) for a, d in pairs if a.arg in DEFAULTS and isinstance(d, ast.Constant)]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flag = next((a.value for a in node.args if isinstance(a, ast.Constant)), "")
            name = str(flag).lstrip("-").replace("-", "_")
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if name in DEFAULTS and isinstance(default, (ast.Constant, ast.BinOp)):
                found.append((name, node.lineno))
    return found


def test_defaults_live_in_their_dataclass():
    offenders = sorted(
        (rel, name, line)
        for p in SERVING_PATH
        for rel in [str(p.relative_to(ROOT))]
        for name, line in literal_defaults(ast.parse(p.read_text(encoding="utf-8")))
        if DEFAULTS[name] != rel
    )
    assert not offenders, f"defaults written outside their module: {offenders}"
