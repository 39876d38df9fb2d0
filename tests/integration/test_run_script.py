"""scripts/run's own options: --help answers at once and sets nothing up."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bare_copy(tmp_path: Path) -> Path:
    """The scripts in a folder without a virtualenv, and a PATH with the few tools bash needs but
    no Python: anything that tried to set up would fail or leave files behind."""
    shutil.copytree(ROOT / "scripts", tmp_path / "repo" / "scripts")
    shutil.copy(ROOT / "requirements.txt", tmp_path / "repo")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dirname", "cat", "basename", "cksum", "cut"):
        (tools / tool).symlink_to(shutil.which(tool))
    return tmp_path / "repo"


def run(repo: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["/bin/bash", str(repo / "scripts" / "run"), *args], capture_output=True, text=True, timeout=30,
        env={"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)},
    )


def test_scripts_run_help_prints_the_usage_without_setting_anything_up(tmp_path):
    repo = bare_copy(tmp_path)

    done = run(repo, tmp_path, "--help")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: scripts/run ")
    assert sorted(p.name for p in repo.iterdir()) == ["requirements.txt", "scripts"]  # no .venv, no var/


def test_scripts_run_h_among_other_options_also_only_prints_the_usage(tmp_path):
    repo = bare_copy(tmp_path)

    done = run(repo, tmp_path, "--port", "9000", "-h")

    assert done.returncode == 0, done.stderr
    assert "--external-broker" in done.stdout


def test_the_usage_of_scripts_run_lists_every_option_of_manage_py_runall(tmp_path):
    runall = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runall", "--help"], capture_output=True, text=True, timeout=60,
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"},
    ).stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", runall.split("options:", 1)[1])) - {
        "--help", "--version", "--verbosity", "--settings", "--pythonpath", "--traceback", "--no-color",
        "--force-color", "--skip-checks",
    }

    usage = run(bare_copy(tmp_path), tmp_path, "--help").stdout

    assert options, runall
    assert sorted(o for o in options if o not in usage) == []
