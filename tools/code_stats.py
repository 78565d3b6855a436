"""Size and shape of the code: lines, the longest functions, function-local imports, import cycles.

    python tools/code_stats.py [ROOT] [--top 10] [--json] [--undeclared] [--parents]

Counts over ``keras_reid/`` and ``plugins/`` of ROOT (default: this checkout). A function-local
import is an ``import`` statement inside a function body (nested functions count once); the
import graph is the modules' imports of each other, function-local ones included (a module's
own parent packages are not counted), and a cycle is a strongly connected group of more than one
module (Tarjan's algorithm). ``--parents`` also counts the package ``__init__`` modules that an
import runs before the module itself (``from keras_reid.stages.base import X`` runs
``keras_reid/stages/__init__.py``): a package ``__init__`` that imports its children then shows
up in a cycle with every module that imports one of its children and is imported by one.

House rule: imports sit at the top of the module. A function-local import is allowed only where
it deliberately defers a heavy dependency (TensorFlow/Keras, MediaPipe, OpenCV, Ray, LiteRT,
albumentations, TensorBoard, matplotlib, SciPy, a project module that imports one of them at its
top, or the stage classes, ``keras_reid.stages.builtin``, about 2 s of CPU) so that a light path stays
light (CLI startup and ``--help``, recipe validation, plugin discovery, reading a JPEG). Such an import is *declared*: a comment starting with the marker
``# deferred:`` on one of its lines names what it defers and why, e.g.::

    import tensorflow as tf  # deferred: TensorFlow, keeps CLI startup light

Every other function-local import is *undeclared*; ``--undeclared`` lists them (file:line and
the statement) and ``tests/test_house.py`` fails on them.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

PACKAGES = {"keras_reid": "keras_reid", "plugins": "keras_reid_plugins"}
MARKER = "# deferred:"


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _imports(tree: ast.AST, module: str, known: set[str], parents: bool = False) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            while name:
                if name in known and name != module and not module.startswith(name + "."):
                    found.add(name)   # (a module's own parent packages run first anyway: no edge)
                # with ``parents``: importing a.b.c runs a/__init__ and a/b/__init__ first, edges
                # to them too (a package __init__ that imports its children then closes a loop)
                name = name.rpartition(".")[0] if parents else ""
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return sorted(out)


def stats(root: Path, top: int = 10, parents: bool = False) -> dict:
    modules = _modules(root)
    lines = 0
    functions: list[tuple[int, str]] = []
    local_imports = 0
    undeclared: list[dict] = []
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        source = path.read_text(encoding="utf-8")
        lines += source.count("\n")
        tree = ast.parse(source)
        graph[module] = _imports(tree, module, set(modules), parents)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1,
                                  f"{path.relative_to(root)}:{node.lineno} {node.name}"))
        for statement in local_import_statements(tree):
            local_imports += 1
            if not declared(source, statement):
                undeclared.append({"where": f"{path.relative_to(root).as_posix()}:{statement.lineno}",
                                   "statement": ast.get_source_segment(source, statement)})
    functions.sort(reverse=True)
    return {"modules": len(modules), "lines": lines, "function_local_imports": local_imports,
            "declared_local_imports": local_imports - len(undeclared),
            "undeclared_local_imports": undeclared,
            "longest_functions": [{"lines": n, "where": w} for n, w in functions[:top]],
            "import_cycles": _cycles(graph)}


def import_cycles(root: Path, parents: bool = False) -> list[list[str]]:
    """The import cycles of ``keras_reid/`` and ``plugins/`` under ``root`` (sorted module groups);
    ``parents``: count the package ``__init__`` modules an import runs first as imported too."""
    modules = _modules(root)
    return _cycles({module: _imports(ast.parse(path.read_text(encoding="utf-8")), module,
                                     set(modules), parents)
                    for module, path in modules.items()})


def local_import_statements(tree: ast.AST) -> list[ast.stmt]:
    """Every ``import``/``from ... import`` statement inside a function body of ``tree``, once."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):   # own body only: nested functions count on their own
                if isinstance(child, (ast.Import, ast.ImportFrom)) and _owner(node, child):
                    out.append(child)
    return sorted(out, key=lambda n: n.lineno)


def declared(source: str, statement: ast.stmt) -> bool:
    """True when one of ``statement``'s source lines carries the ``# deferred:`` marker."""
    lines = source.splitlines()[statement.lineno - 1:statement.end_lineno]
    return any(MARKER in line for line in lines)


def _owner(function: ast.AST, node: ast.AST) -> bool:
    """True when ``node`` is in ``function``'s body and not inside a function nested in it."""
    def search(parent: ast.AST) -> bool:
        for child in ast.iter_child_nodes(parent):
            if child is node:
                return True
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if search(child):
                return True
        return False
    return search(function)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--undeclared", action="store_true",
                        help="list the function-local imports without the '# deferred:' marker")
    parser.add_argument("--parents", action="store_true",
                        help="importing a.b.c also imports the packages a and a.b: count those edges")
    args = parser.parse_args()
    out = stats(Path(args.root), args.top, args.parents)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    undeclared = out["undeclared_local_imports"]
    print(f"{out['modules']} modules, {out['lines']:,} lines, {out['function_local_imports']} "
          f"function-local imports ({out['declared_local_imports']} declared '{MARKER}', "
          f"{len(undeclared)} undeclared), {len(out['import_cycles'])} import cycles")
    if args.undeclared:
        for u in undeclared:
            print(f"  {u['where']}: {' '.join(u['statement'].split())}")
    for cycle in out["import_cycles"]:
        print("  cycle: " + " <-> ".join(cycle))
    print("longest functions:")
    for f in out["longest_functions"]:
        print(f"  {f['lines']:4d}  {f['where']}")


if __name__ == "__main__":
    main()
