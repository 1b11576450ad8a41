"""The subpackages of `pal` form layers (ARCHITECTURE.md): a module imports only its own layer and those below it, no
modules import each other in a circle, at module level or inside a function, and nothing below the command line
starts it as a subprocess."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pal"
# Bottom to top (ARCHITECTURE.md): shared utilities, encoders, data, the model (the modules at the top of `pal`,
# Hugging Face style), training plumbing, the two recipes, inference, serving, evaluation, benchmarks, workflows, the
# command line.
LAYERS = ["common", "encoders", "data", "model", "training", "pretraining", "curriculum", "inference", "serving", "eval",
          "bench", "workflows", "cli"]
CLI_MODULES = ("pal", "pal.__main__", "pal.cli", "pal.cli.main")


def layer_of(module: str) -> str:
    """`pal.eval.metrics.asr` → "eval"; a module at the top of `pal` (the model files, `pal` itself) → "model";
    `pal.__main__`, which is `pal` the command, → "cli"."""
    parts = module.split(".")
    if parts[:2] == ["pal", "__main__"]:
        return "cli"
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "model"


def _cli_launches(path: Path) -> list[int]:
    """Lines where a file builds a `python -m pal ...` command (a list or tuple holding "-m" then "pal", "pal.cli" or
    "pal.cli.main"): a call up to the top layer that no import shows."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b in CLI_MODULES for a, b in zip(words, words[1:])):
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
            for p in PACKAGE.rglob("*.py")}


def test_every_folder_of_pal_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    assert folders == set(LAYERS) - {"model"}


def test_no_import_runs_up_the_layers():
    upward = []
    for module, path in _modules().items():
        rank = LAYERS.index(layer_of(module))
        for name in _imports(path):
            if (name == "pal" or name.startswith("pal.")) and LAYERS.index(layer_of(name)) > rank:
                upward.append(f"{module} imports {name}")
    assert not upward, upward


def test_the_layer_check_sees_an_upward_import(tmp_path):
    assert layer_of("pal.modeling_pal") == "model" and layer_of("pal.eval.metrics.asr") == "eval"
    assert LAYERS.index(layer_of("pal.curriculum.recipe")) > LAYERS.index(layer_of("pal.lal_injection"))


def test_no_package_below_the_cli_launches_it():
    launches = [f"{module} line {line}" for module, path in _modules().items() if layer_of(module) != "cli"
                for line in _cli_launches(path)]
    assert not launches, launches


def test_the_launch_check_sees_a_cli_subprocess(tmp_path):
    source = tmp_path / "launcher.py"
    source.write_text('import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pal", "data", "demo"])\n'
                      'other = ("-m", "pal.bench.data")\n')
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
