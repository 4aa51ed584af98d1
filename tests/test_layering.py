"""The house's floors, read from the source (ast, no imports executed):

- no import cycles between the suite's modules (module-level imports);
- the floors: utils/ imports nothing of the suite; models/attention/ only utils/; models/ never datamodules/,
  training/, callbacks/ or profiling/; datamodules/ never models/, training/, callbacks/ or profiling/; the
  measurement core of profiling/ (timing, memory, flops, peaks, machine, errors, the benchmarks' harness) never
  models/; nothing imports training/ but training/ itself;
- no import inside a function, except of an optional or slow dependency that a caller may never need
  (OPTIONAL below): an import hidden in a function is how a cycle or a wrong arrow hides.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "models", "datamodules", "callbacks", "profiling", "training")
# third-party modules a function may import lazily: optional extras, or slow to import and rarely needed
OPTIONAL = {"matplotlib", "ptflops", "datasets", "tokenizers", "torch_xla", "pynvml", "psutil", "linformer",
            "performer_pytorch", "nystrom_attention", "local_attention", "einops"}
CORE = ("profiling.timing", "profiling.memory", "profiling.flops", "profiling.peaks", "profiling.machine", "profiling.errors",
        "profiling.harness")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def resolve(mod: str, node: ast.ImportFrom, is_package: bool) -> List[str]:
    if node.level:
        base = mod.split(".") if is_package else mod.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from pkg import name` may name a submodule: count it as one when that file exists
    return [target] + [f"{target}.{a.name}" for a in node.names]


def imports(mod: str, path: Path) -> Tuple[Set[str], List[Tuple[int, str]]]:
    """(suite modules imported at module level, [(line, module) imported inside functions])."""
    tree = ast.parse(path.read_text())
    top: Set[str] = set()
    inner: List[Tuple[int, str]] = []
    is_package = path.name == "__init__.py"

    def names(node) -> List[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        return resolve(mod, node, is_package)

    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(names(node))
        elif isinstance(node, ast.If) or isinstance(node, ast.Try):  # `if TYPE_CHECKING:` / try: import x
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    top.update(names(sub))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    inner += [(sub.lineno, n) for n in names(sub)[:1]]
    return top, inner


MODULES = modules()
GRAPH = {m: {t for t in imports(m, p)[0] if t in MODULES and t != m} for m, p in MODULES.items()}


def test_no_import_cycles():
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                if not all(c.startswith(a) or a.startswith(c) for a, c in zip(cycle, cycle[1:])):  # a package and its own modules are not a cycle
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def _imports_from(prefixes, forbidden):
    bad = []
    for m, targets in GRAPH.items():
        if m.startswith(prefixes):
            bad += [f"{m} -> {t}" for t in targets if t.startswith(forbidden) and not t.startswith(prefixes)]
    return bad


@pytest.mark.parametrize("prefixes, forbidden", [
    (("utils",), ("models", "datamodules", "callbacks", "profiling", "training")),
    (("models.attention",), ("models", "datamodules", "callbacks", "profiling", "training")),
    (("models",), ("datamodules", "training", "callbacks", "profiling")),
    (("datamodules",), ("models", "training", "callbacks", "profiling")),
    (CORE, ("models", "datamodules", "training", "callbacks")),
    (("utils", "models", "datamodules", "callbacks", "profiling"), ("training",)),
], ids=["utils", "attention", "models", "datamodules", "measurement-core", "training-on-top"])
def test_floors(prefixes, forbidden):
    assert _imports_from(prefixes, forbidden) == []


def test_no_imports_inside_functions_but_optional_ones():
    hidden = []
    for m, p in sorted(MODULES.items()):
        for line, target in imports(m, p)[1]:
            if target.split(".")[0] not in OPTIONAL:
                hidden.append(f"{p.relative_to(ROOT)}:{line} imports {target}")
    assert hidden == []
