"""The parity tests on a clone alone: without the official fixtures they skip with a reason that says what is missing
and how to point at it; where PAL_REQUIRE_FIXTURES is set (CI), the same absence fails instead."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def _parity_test_with_fixtures_in(folder, **env):
    environment = {k: v for k, v in os.environ.items() if k != "PAL_REQUIRE_FIXTURES"}
    environment.update(PAL_SHARED=str(folder), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider",
                           "tests/test_sslam_pretrain_parity.py::test_targets"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_absent_fixtures_skip_with_a_reason_naming_the_setting(tmp_path):
    done = _parity_test_with_fixtures_in(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 skipped" in done.stdout and "1 passed" not in done.stdout
    # the summary line names the fixture, the missing folder and the setting that points at it
    assert "SKIPPED" in done.stdout and "one SSLAM pre-training step of the official code" in done.stdout
    assert str(tmp_path / "fixtures" / "sslam_pretrain_reference") in done.stdout and "PAL_SHARED" in done.stdout


def test_absent_fixtures_fail_where_they_are_required(tmp_path):
    done = _parity_test_with_fixtures_in(tmp_path, PAL_REQUIRE_FIXTURES="1")
    assert done.returncode == 1, done.stdout[-2000:]
    assert "PAL_REQUIRE_FIXTURES is set" in done.stdout and "skipped" not in done.stdout
