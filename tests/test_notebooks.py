"""The notebooks: each opens with its Colab badge and a guarded install cell, and runs top to bottom in small mode
(`JAXLUMP_SMALL=1`), executed by nbmake as CI runs them (`JAXLUMP_SMALL=1 pytest --nbmake notebooks`), each in a
subprocess that runs on the second core while the other tests run (the `background` marker, tests/conftest.py).
Their committed outputs are the full mode's (`JAXLUMP_SMALL` unset) and show nothing of the machine they ran on."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/jaxlump/jaxlump/blob/main/notebooks/{name}"


def test_the_five_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quick_start.ipynb",
        "02_eps_sweep.ipynb",
        "03_training_loop.ipynb",
        "04_baselines.ipynb",
        "05_your_own_model.ipynb",
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


# What a reader sees is the full mode's run, free of the machine it ran on: no absolute path (a warning's
# `/usr/.../site-packages/...:21:` line, a temporary folder) and no small-mode output (`JAXLUMP_SMALL=1` is the
# test run's toy size; commit the outputs of `jupyter nbconvert --to notebook --execute --inplace` without it).
_MACHINE_SPECIFIC = re.compile(
    r"(?<![\w.])/(usr|home|tmp|work|root|opt|var|private|Users)/|site-packages|\b[A-Z]:\\|small mode"
)


def _output_texts(path):
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                yield "".join(output["text"])
            elif output["output_type"] == "error":
                yield "\n".join(output["traceback"])
            else:
                yield from ("".join(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_full_mode_and_name_no_local_path(path):
    texts = list(_output_texts(path))
    found = sorted({m.group(0) for text in texts for m in _MACHINE_SPECIFIC.finditer(text)})
    assert not found, f"{path.name}'s committed outputs show {found}: re-execute it in full mode (JAXLUMP_SMALL unset)"
    assert any("| full mode" in text for text in texts), f"{path.name}'s outputs do not say they ran in full mode"


@pytest.mark.integration  # a fresh interpreter importing jax: 2-5 s on 2 busy cores
def test_importing_jaxlump_imports_no_notebook_progress_bar():
    # tqdm.auto, imported in a Jupyter kernel without ipywidgets, warns with the path of its own file
    # ("/.../site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found"): every notebook printed that line.
    code = "import sys, jaxlump; print(sorted(m for m in sys.modules if m.startswith('tqdm.auto')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def _run_in_small_mode(path):
    argv = [sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "-q", "-o", "addopts=", str(path)]
    return pytest.mark.background(argv, 1200, cwd=ROOT, env={**os.environ, "JAXLUMP_SMALL": "1"})


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("nbmake") is None, reason="nbmake is not installed (pip install .[dev])")
@pytest.mark.parametrize("path", [pytest.param(p, marks=_run_in_small_mode(p), id=p.stem) for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, background):
    assert background.returncode == 0, background.stdout[-6000:] + background.stderr[-2000:]
