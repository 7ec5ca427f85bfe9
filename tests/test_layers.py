"""Layers: an import never runs back up (STYLE.md). train/ reads records and config, never stages/."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "pipeline" / "train"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[str, str]]:
    """(enclosing function or "<module>", absolute module name) of every import in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((where, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                parts = package.split(".")
                base = parts[:len(parts) - child.level + 1] if child.level else []
                target = ".".join([*base, *([child.module] if child.module else [])])
                # a name imported from a package may be a module: `from .. import stages`
                found.extend([(where, target), *((where, f"{target}.{a.name}") for a in child.names)])
            visit(child, child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else where)

    visit(ast.parse(source), "<module>")
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_scanner_sees_every_kind_of_import():
    source = ("from ..stages.export import x\nfrom .. import stages\nimport pipeline.stages.evolve\n"
              "def f():\n    from ..stages import parse\n")
    found = imports(source, "pipeline.train.data")
    assert ("<module>", "pipeline.stages.export") in found and ("<module>", "pipeline.stages") in found
    assert ("<module>", "pipeline.stages.evolve") in found and ("f", "pipeline.stages.parse") in found


def test_no_module_under_train_imports_stages():
    bad = []
    for path in sorted(TRAIN.rglob("*.py")):
        module = module_name(path)
        for where, target in imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            if _within(target, "pipeline.stages"):
                bad.append(f"{path.relative_to(ROOT)}: {where} imports {target}")
    assert not bad, "train/ must not import stages/ (move what both need into pipeline/records.py):\n" + "\n".join(bad)


def test_each_train_module_imported_alone_loads_no_stage():
    """What the source scan cannot see: an import of ours that itself pulls in stages/.

    One interpreter imports them all first: what each loads alone is part of what all load
    together, so a clean result clears every one (one torch import, not seven). Only when it
    is not clean is each imported alone, in its own interpreter, to name the culprits.
    """
    modules = [module_name(p) for p in sorted(TRAIN.rglob("*.py"))]
    check = ("import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline.stages'))))")

    def stages_loaded(*names: str) -> str:
        p = subprocess.run([sys.executable, "-c", check, *names], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"import {names} failed:\n{p.stderr}"
        return p.stdout.strip()

    if stages_loaded(*modules):
        bad = {m: loaded for m in modules if (loaded := stages_loaded(m))}
        raise AssertionError(f"these train modules load stages/ when imported alone: {bad}")


def test_each_module_imports_alone_and_none_reaches_up_to_the_cli():
    """Every module outside train/ (checked above) imports in a fresh interpreter; none but the CLI loads
    pipeline.cli, and the one config module loads nothing of ours but the errors it raises."""
    from concurrent.futures import ThreadPoolExecutor

    modules = [module_name(p) for p in sorted((ROOT / "pipeline").rglob("*.py"))
               if p.name != "__main__.py" and TRAIN not in p.parents]
    check = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
             "print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline'))))")

    def load(module: str) -> tuple[str, subprocess.CompletedProcess]:
        return module, subprocess.run([sys.executable, "-c", check, module], cwd=ROOT, capture_output=True,
                                      text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        done = dict(pool.map(load, modules))
    failed = {m: p.stderr[-1500:] for m, p in done.items() if p.returncode}
    assert not failed, failed
    loaded = {m: set(p.stdout.split()) for m, p in done.items()}
    assert loaded["pipeline.config"] <= {"pipeline", "pipeline.config", "pipeline.errors"}, loaded["pipeline.config"]
    assert not [m for m, found in loaded.items() if "pipeline.cli" in found and m != "pipeline.cli"]


def test_nothing_but_the_entry_point_imports_the_cli_and_config_reads_only_the_ground():
    bad = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        module = module_name(path)
        for where, target in imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            if target == "pipeline.cli" and module not in ("pipeline.cli", "pipeline.__main__"):
                bad.append(f"{module}: {where} imports pipeline.cli")
            if module == "pipeline.config" and target.startswith("pipeline.") and \
                    not (target == "pipeline.errors" or target.startswith("pipeline.errors.")):
                bad.append(f"pipeline.config: {where} imports {target}")
    assert not bad, "\n".join(bad)


def _own_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "pipeline").rglob("*.py"))}


def _module_of(target: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that `target` names or lies in (`pipeline.report.figures.compute` -> its module)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports, at the top or inside a function (a lazy import is still one)."""
    modules = _own_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for _, target in imports(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            found = _module_of(target, modules)
            if found and found != module:
                graph[module].add(found)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """(modules, one circle through the first) for every group of two or more modules that reach each other
    (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in sorted(graph[m]):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return [(group, _cycle_through(group, graph)) for group in groups]


def _cycle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One path from the group's first module back to itself, within the group (breadth first: the shortest)."""
    start, inside = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        m = queue.pop(0)
        for n in sorted(graph[m] & inside):
            if n == start:
                return [*paths[m], start]
            if n not in paths:
                paths[n] = [*paths[m], n]
                queue.append(n)
    return group


def test_the_cycle_finder_names_each_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert import_cycles(graph) == [(["a", "b", "c"], ["a", "b", "c", "a"])]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    """A circle, even through an import inside a function, means no module of it can be read or moved alone."""
    cycles = import_cycles(import_graph())
    assert not cycles, "import circles (move what both need down into a module of its own):\n" + \
        "\n".join(f"{' -> '.join(cycle)} (the circle takes in {', '.join(group)})" for group, cycle in cycles)


def private_imports(source: str, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """Private names (`_x`, not dunders) this module takes from another module of ours: imported, or read off one."""
    package = module if is_package else module.rpartition(".")[0]
    private = lambda name: name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # noqa: E731
    found, aliases = [], {}
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            source_module = ".".join([*base, *([node.module] if node.module else [])])
            if _module_of(source_module, modules) is None:
                continue
            for a in node.names:
                full = f"{source_module}.{a.name}"
                if full in modules:
                    aliases[a.asname or a.name] = full  # `from . import verbs`: a module, read below
                if private(a.name) or any(private(p) for p in source_module.split(".")):
                    found.append(f"{module}:{node.lineno} imports {a.name} from {source_module}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _module_of(a.name, modules) is not None:
                    if a.asname:
                        aliases[a.asname] = a.name
                    if any(private(p) for p in a.name.split(".")):
                        found.append(f"{module}:{node.lineno} imports {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and private(node.attr) and aliases[node.value.id] != module:
            found.append(f"{module}:{node.lineno} reads {node.attr} of {aliases[node.value.id]}")
    return found


def test_the_private_name_finder_sees_imports_and_reads():
    modules = {"pipeline.report.plots": Path("p"), "pipeline.report.verbs": Path("v"), "pipeline": Path("i")}
    source = ("from .plots import _save, draw\nfrom .. import __version__\nfrom . import verbs\n"
              "def f():\n    return verbs._load_spacy()\n")
    found = private_imports(source, "pipeline.report.quality", False, modules)
    assert [f.split(" ", 1)[1] for f in found] == ["imports _save from pipeline.report.plots",
                                                   "reads _load_spacy of pipeline.report.verbs"]


def test_no_module_takes_a_private_name_from_another():
    modules = _own_modules()
    bad = [f for m, p in modules.items()
           for f in private_imports(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", modules)]
    assert not bad, "a private name belongs to its module (make it public, or move it down):\n" + "\n".join(bad)
