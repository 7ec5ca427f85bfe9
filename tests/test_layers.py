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
