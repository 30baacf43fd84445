"""The notebooks: each opens with its Colab badge and a guarded install cell, and runs top to bottom in small mode
(`JAXLUMP_SMALL=1`), executed by nbmake as CI runs them (`JAXLUMP_SMALL=1 pytest --nbmake notebooks`), each in a
subprocess that runs on the second core while the other tests run (the `background` marker, tests/conftest.py)."""

import importlib.util
import json
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/jaxlump/jaxlump/blob/main/notebooks/{name}"


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quick_start.ipynb",
        "02_eps_sweep.ipynb",
        "03_training_loop.ipynb",
        "04_baselines.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_install_cell_and_committed_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and COLAB.format(name=path.name) in "".join(cells[0]["source"])
    install = "".join(cells[1]["source"])
    assert 'importlib.util.find_spec("jaxlump") is None' in install and "%pip install" in install
    code = [c for c in cells if c["cell_type"] == "code"]
    # committed with fresh outputs: every cell after the install cell ran, in order, without an error
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1))
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])


def _run_in_small_mode(path):
    argv = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "-q", "-o", "addopts=", str(path)]
    return pytest.mark.background(argv, 1200, cwd=ROOT, env={**os.environ, "JAXLUMP_SMALL": "1"})


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("nbmake") is None, reason="nbmake is not installed (pip install .[dev])")
@pytest.mark.parametrize("path", [pytest.param(p, marks=_run_in_small_mode(p), id=p.stem) for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, background):
    assert background.returncode == 0, background.stdout[-6000:] + background.stderr[-2000:]
