"""The code base passes ruff's lint and format checks with the project's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_lint_and_format():
    ruff = [sys.executable, "-m", "ruff"]
    lint = subprocess.run([*ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([*ruff, "format", "--check", str(ROOT)], capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
