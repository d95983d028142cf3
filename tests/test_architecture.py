"""The package's shape: imports follow the layer table of ARCHITECTURE.md, there is no import cycle, and
long modules say why they are long."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "ltsearch"
MAX_LINES = 300
LONG_REASON = "Why this module is long:"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "conf" not in p.relative_to(PACKAGE).parts}
IMPORTABLE = sorted(m for m in MODULES if m != "ltsearch.__main__")  # __main__ runs the CLI when imported


def imports_of(name: str) -> set[str]:
    """The ltsearch modules `name` imports, counting imports inside functions, not `if TYPE_CHECKING:` ones."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in
               ast.unparse(block.test) for n in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from x import name` runs x (a package's __init__ too) and, when x.name is a module, x.name
            candidates = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate.startswith("ltsearch"):
                found.add(candidate)
    return found


def layers() -> dict[str, int]:
    """Top-level module or package -> layer, from the table in ARCHITECTURE.md."""
    table = {}
    for line in (REPO / "ARCHITECTURE.md").read_text().splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|(.*?)\|", line)
        if match:
            for group in re.findall(r"`([\w_]+)`", match.group(2)):
                table[group] = int(match.group(1))
    return table


def group_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_module_has_a_layer():
    table = layers()
    missing = sorted({group_of(m) for m in MODULES} - set(table))
    assert not missing, f"add these to the layer table of ARCHITECTURE.md: {missing}"


def test_imports_point_down_the_layers():
    table = layers()
    wrong = []
    for name in sorted(MODULES):
        here = table[group_of(name)]
        for target in sorted(imports_of(name)):
            if table[group_of(target)] > here:
                wrong.append(f"{name} (layer {here}) imports {target} (layer {table[group_of(target)]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 = on the path, 2 = finished
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [node, target]) if target in path
                              else f"{node} -> {target}")
            elif target not in state:
                visit(target, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "\n".join(cycles)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """No module depends on another having been imported first (what a hidden cycle would need)."""
    code = ("import importlib, sys\nfor name in sys.argv[1:]:\n"
            "    for m in [m for m in sys.modules if m.startswith('ltsearch')]: del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", code, *IMPORTABLE], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_long_modules_say_why():
    unexplained = []
    for name, path in sorted(MODULES.items()):
        lines = path.read_text().count("\n")
        if lines > MAX_LINES and LONG_REASON not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            unexplained.append(f"{name}: {lines} lines")
    assert not unexplained, f"split these, or say '{LONG_REASON} ...' in the docstring: {unexplained}"


def test_a_run_on_tensor_data_never_imports_torchvision():
    """torchvision takes seconds to import (a tenth of a quickstart run on a slow CPU): only image folders,
    torchvision datasets and torchvision's networks need it, so the CLI and the pipeline import it there."""
    code = ("import sys\nimport ltsearch.app, ltsearch.cli, ltsearch.api\n"
            "from ltsearch.compose import compose\nfrom ltsearch.data import build_data\n"
            "from ltsearch.models import build_model\n"
            "cfg = compose('dataset=fake', 'model=resnet20', 'dataset.shape=[3,8,8]')\n"
            "data = build_data(cfg.dataset)\nbuild_model(cfg.model, data.input_shape, data.num_classes, 0)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
