"""The packages form layers (README "Where things live"): a module imports only its own package and those below it,
and no modules import each other in a circle, at module level or inside a function."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top (ARCHITECTURE.md): shared utilities, encoders, data, the model, training plumbing, recipes, inference,
# evaluation, benchmarks, workflows, the command line.
LAYERS = ["common", "encoders", "data", "pal", "training", "recipes", "inference", "serving", "eval", "bench", "workflows",
          "cli"]


def _cli_launches(path: Path) -> list[int]:
    """Lines where a file builds a `python -m cli ...` command (a list or tuple holding "-m" then "cli" or
    "cli.main"): a call up to the top layer that no import shows."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b in ("cli", "cli.main") for a, b in zip(words, words[1:])):
                lines.append(node.lineno)
    return lines


def _imports(path: Path) -> set[str]:
    """Every absolute module name a file imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, node.module or "")).strip(".")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return names


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def test_no_import_runs_up_the_layers():
    upward = []
    for module, path in _modules().items():
        rank = LAYERS.index(module.split(".")[0])
        for name in _imports(path):
            top = name.split(".")[0]
            if top in LAYERS and LAYERS.index(top) > rank:
                upward.append(f"{module} imports {name}")
    assert not upward, upward


def test_no_package_below_the_cli_launches_it():
    launches = [f"{module} line {line}" for module, path in _modules().items() if not module.startswith("cli")
                for line in _cli_launches(path)]
    assert not launches, launches


def test_the_launch_check_sees_a_cli_subprocess(tmp_path):
    source = tmp_path / "launcher.py"
    source.write_text('import subprocess, sys\nsubprocess.run([sys.executable, "-m", "cli", "data", "demo"])\n'
                      'other = ("-m", "bench.data")\n')
    assert _cli_launches(source) == [2]


def test_no_import_cycles():
    modules = _modules()
    graph = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    cycles, state = [], {}  # depth-first search: a module met again while still on the path closes a cycle

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [module, dep]) if dep in path else f"{module} -> {dep}")
            elif dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, cycles
