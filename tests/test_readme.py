"""The README's Python examples run as written (each in a fresh process), so they cannot rot.

A ```python block runs unless a ``<!-- readme-test: skip (reason) -->`` line precedes it or it
imports a package that is not installed here (e.g. CuPy on a machine without it).
"""
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b(.*?)-->\s*$")


def _blocks():
    """(id, code, skip reason or None) of every python block of the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        before = text[:m.start()].rstrip("\n").splitlines()
        heading = next((line.lstrip("# ") for line in reversed(before) if line.startswith("#")), "top")
        skip = _SKIP.search(before[-1]) if before else None
        line = text.count("\n", 0, m.start()) + 1
        out.append((f"line{line}-{heading[:30]}", m.group(1), skip.group(1).strip(" ()") if skip else None))
    return out


def _missing_imports(code):
    """Top-level packages the code imports that are not installed."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names if importlib.util.find_spec(n) is None)


BLOCKS = _blocks()


def test_the_readme_has_runnable_examples():
    runnable = [b for b in BLOCKS if b[2] is None and not _missing_imports(b[1])]
    assert len(runnable) >= 4  # the sketch, torch, DLPack and fedsim API examples at least


@pytest.mark.parametrize("code,skip", [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_readme_example_runs(code, skip, tmp_path):
    if skip is not None:
        pytest.skip(f"marked in the README: {skip}")
    missing = _missing_imports(code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README example failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"
