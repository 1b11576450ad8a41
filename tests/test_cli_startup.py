"""`pal --help` answers at once: the entry point imports torch, transformers and the benchmarks only in the commands
that use them (it took about 17 s when every benchmark module was imported to build the parser)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

HEAVY = ("torch", "transformers", "deepspeed", "fastapi", "pal.bench.efficiency", "pal.bench.sslam_pretrain",
         "pal.curriculum.recipe")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = f"import sys\n{code}\nprint('\\n' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[-1].split() if done.stdout.strip() else []  # help text comes first


def _help(*argv: str) -> str:
    return f"from pal.cli.main import main\ntry:\n    main({list(argv)!r})\nexcept SystemExit:\n    pass"


def test_help_loads_no_heavy_module():
    assert _loaded_after(_help("--help")) == []
    assert _loaded_after(_help("data", "convert", "--help")) == []


def test_a_benchmarks_help_loads_only_that_benchmark():
    loaded = _loaded_after(_help("bench", "sslam", "--help"))
    assert "pal.bench.sslam_pretrain" in loaded and "pal.bench.efficiency" not in loaded


def test_the_package_names_still_resolve():
    loaded = _loaded_after("from pal import PALForConditionalGeneration, TRAINABLE_GROUPS\n"
                           "from pal.encoders import EncoderOutputs")
    assert "torch" in loaded and "transformers" in loaded
