"""The project as a user installs it: a wheel (not the editable checkout) in a fresh virtual environment, run from a
folder holding the user's own `eval.py`, `common/` and `data/`. Everything imports from the one namespace `pal`, and
the configs ship inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, fill_with_users_files


def _run(args: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's bin/, the user's folder). The wheel is built from the checkout without build
    isolation (no index needed); the environment sees this interpreter's installed dependencies through a path
    entry, which does not run their .pth files, so the checkout's editable install stays invisible to it."""
    root = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", ROOT], root)
    wheel = next((root / "dist").glob("pal_audio_llm-*.whl"))
    _run([sys.executable, "-m", "venv", root / "venv"], root)
    bin_ = root / "venv" / "bin"
    site = Path(_run([bin_ / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     root).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([bin_ / "python", "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel],
         root)
    return bin_, fill_with_users_files(root / "user")


def test_the_wheel_holds_one_package_and_its_configs(installed):
    wheel = next((installed[0].parents[1] / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"pal"}
    assert "pal/configs/curriculum/demo-full.yaml" in names and "pal/configs/deepspeed/zero2.json" in names
    assert "pal/serving/static/index.html" in names


def test_pal_runs_from_the_wheel_beside_the_users_own_eval_common_and_data(installed):
    bin_, user = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([bin_ / "python", "-c", "import pal, pal.cli.main; print(pal.__file__)"], user, env).stdout
    assert Path(where.strip()).is_relative_to(bin_.parent), where  # the installed copy, not the checkout
    assert "demo" in _run([bin_ / "pal", "--help"], user, env).stdout
    assert "--preset" in _run([bin_ / "pal", "demo", "--preset", "smoke", "--help"], user, env).stdout
    # `python -m pal` is `pal`: what torchrun runs, with the working directory first on sys.path.
    assert "--nproc" in _run([bin_ / "python", "-m", "pal", "train", "--help"], user, env).stdout
    listed = _run([bin_ / "pal", "configs", "list"], user, env).stdout.split()
    assert "pal:curriculum/demo-full.yaml" in listed and "pal:sslam/demo.yaml" in listed
    # A shipped config loads from the installed package, its sibling configs with it.
    probe = ("from pal.curriculum.config import CurriculumConfig\n"
             "c = CurriculumConfig.from_yaml('pal:curriculum/demo-smoke.yaml')\n"
             "print(c.model.encoders); print(c.stages[0].deepspeed)")
    encoders, deepspeed = _run([bin_ / "python", "-c", probe], user, env).stdout.split()
    for path in (encoders, deepspeed):
        assert Path(path).is_file() and Path(path).is_relative_to(bin_.parent), path
