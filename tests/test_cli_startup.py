"""`pal --help` answers at once: the entry point imports torch, transformers and the benchmarks only in the commands
that use them (it took about 17 s when every benchmark module was imported to build the parser). A plain `import pal`
does load them: it registers the Auto classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

HEAVY = ("torch", "transformers", "deepspeed", "fastapi", "pal.bench.efficiency", "pal.bench.sslam_pretrain",
         "pal.curriculum.recipe")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint('\\n' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[-1].split() if done.stdout.strip() else []  # help text comes first


def _imported_by_command(*argv: str, module: bool = False) -> set[str]:
    """The modules the `pal` console script (or `python -m pal`) imports to answer `argv`, from the interpreter's own
    import trace (-X importtime writes one stderr line per module)."""
    command = [sys.executable, "-X", "importtime", "-m", "pal"] if module else [str(Path(sys.executable).parent / "pal")]
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([*command, *argv], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


def test_help_loads_no_heavy_module():
    for argv, module in ((("--help",), False), (("data", "convert", "--help"), False), (("--help",), True)):
        imported = _imported_by_command(*argv, module=module)
        assert "pal" in imported and "pal.cli.main" in imported  # the trace is read
        assert not imported & set(HEAVY), (argv, imported & set(HEAVY))


def test_a_benchmarks_help_loads_only_that_benchmark():
    # The benchmark is imported by importlib.import_module, which -X importtime does not trace: read sys.modules in
    # an interpreter that calls the entry point as the console script does (sys.argv[0] "pal").
    loaded = _loaded_after("sys.argv = ['pal']\nfrom pal.cli.main import main\ntry:\n"
                           "    main(['bench', 'sslam', '--help'])\nexcept SystemExit:\n    pass")
    assert "pal.bench.sslam_pretrain" in loaded and "pal.bench.efficiency" not in loaded


def test_the_package_names_still_resolve():
    loaded = _loaded_after("from pal import PALForConditionalGeneration, TRAINABLE_GROUPS\n"
                           "from pal.encoders import EncoderOutputs")
    assert "torch" in loaded and "transformers" in loaded


def test_import_pal_registers_the_auto_classes():
    """A user's script that imports pal finds model type "pal" in transformers' Auto mappings."""
    probe = ("import pal\nfrom transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
             "config = AutoConfig.for_model('pal')\n"
             "print(type(config).__name__, AutoModel._model_mapping[type(config)].__name__,"
             " AutoModelForCausalLM._model_mapping[type(config)].__name__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["PALConfig", "PALForConditionalGeneration", "PALForConditionalGeneration"]
