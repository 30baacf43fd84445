"""The benchmark scripts still import: they reach into the package's private modules, and a rename there would
otherwise surface only when a benchmark is next rerun (it did once: `perf_merge.py` after `merge_cost._centred`)."""

import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.integration
def test_every_benchmark_script_imports():
    names = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
    assert {"perf_merge", "perf_scale", "allocation", "ablation_lumping"} <= set(names)
    code = (
        f"import importlib, sys; sys.path.insert(0, {str(BENCHMARKS)!r}); "
        f"[importlib.import_module(n) for n in {names!r}]"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_regeneration_plan_covers_every_committed_result_and_finds_a_stale_one(monkeypatch):
    """`benchmarks/regenerate.py` names a command for every committed result and picks exactly the stale ones."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import provenance
    import regenerate

    committed = {p.name for p in provenance.RESULTS.glob("*.json") if not p.name.endswith("_quick.json")}
    assert set(regenerate.PLAN) == committed
    for commands in regenerate.PLAN.values():
        assert all((BENCHMARKS / command[0]).is_file() and "--overwrite" in command for command in commands)
    monkeypatch.setattr(
        provenance, "stale", lambda block: ["jaxlump/x.py::f"] if "perf_sweep" in block["command"][0] else []
    )
    assert regenerate.stale_results(everything=False) == ["perf_sweep.json"]
    assert regenerate.stale_results(everything=True) == list(regenerate.PLAN)
