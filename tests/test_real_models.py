"""Issue 31's benchmark on real models (`benchmarks/real_models.py`): its `--quick` run end to end (integration step),
and its targets and resuming (default step)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

POINT_FIELDS = {
    "method", "compress_to", "scope", "target_fraction", "target", "compressible_params", "load_before", "wall_s",
    "params", "params_fraction", "realised_fraction", "widths_before", "widths_after", "knobs", "result",
    "calib_output_rel_rms", "calib_output_max_abs", "latency_b1_us", "latency_big_us", "load_after",
}  # fmt: skip


def test_targets_cut_the_compressible_parameters_only():
    import real_models as R

    sites = [
        {"path": "a.attention", "unit": "head", "width": 4, "producers": ["a.q"], "consumer": "a.o"},
        {"path": "a.ffn", "unit": "neuron", "width": 128, "producers": ["a.up"], "consumer": "a.down"},
    ]
    layers = {
        "a.q": [[256, 2], [16, 1]],
        "a.o": [[256, 2], [16, 1]],
        "a.up": [[1024, 2], [128, 1]],
        "a.down": [[1024, 2], [8, 1]],
    }
    count, compressible = R.target_for(R.METHODS["ID"], sites, layers, 5000, 0.3)
    assert (count, compressible) == (5000 - round(0.7 * 2184), 2184)  # heads kept whole: the FFN's parameters only
    widths, compressible = R.target_for(R.METHODS["merge_or_remove +heads"], sites, layers, 5000, 0.3)
    assert compressible == 2184 + 544 and set(widths) == {"a.attention", "a.ffn"}
    realised = R.site_params(sites, layers, widths)
    assert 0.3 * compressible - 17 < realised <= 0.3 * compressible  # within one FFN unit (17 parameters), never above
    # A chain of channel sites shares layers: each counted once, a weight scaled by both of its sites' widths.
    chain = [
        {"path": "conv2", "unit": "channel", "width": 8, "producers": ["conv1"], "consumer": "conv2"},
        {"path": "conv3", "unit": "channel", "width": 8, "producers": ["conv2"], "consumer": "conv3"},
    ]
    convs = {"conv1": [[72, 4], [8, 1]], "conv2": [[576, 4], [8, 1]], "conv3": [[576, 4], [8, 1]]}
    assert R.site_params(chain, convs) == 72 + 8 + 576 + 8 + 576 + 8
    assert R.site_params(chain, convs, {"conv2": 4, "conv3": 2}) == 36 + 4 + 576 / 8 + 2 + 576 / 4 + 8
    widths, _ = R.target_for(R.METHODS["ID"], chain, convs, 5000, 0.5)
    assert set(widths) == {"conv2", "conv3"}  # a model of channel sites only: every method gets the widths


def test_an_unfinished_record_is_resumed_and_a_finished_one_skipped(tmp_path):
    import dataclasses

    import real_models as R

    config = R.QUICK_FAMILIES["lm-gelu"]
    methods = {k: R.METHODS[k] for k in ("merge_or_remove", "ID")}
    sites = [{"path": "b.ffn", "unit": "neuron", "width": 8, "producers": ["b.up"], "consumer": "b.down"}]
    record = {"family": "lm-gelu", "config": R.jsonable(dataclasses.asdict(config)), "sites": sites, "points": []}
    record["points"] = [{"method": "merge_or_remove", "target_fraction": f} for f in (0.7, 0.4)]
    path = tmp_path / "lm-gelu_s0.json"
    R.write_json(path.with_suffix(".partial"), record)
    todo, resumed = R.pending(path, config, methods, (0.7, 0.4), overwrite=False)
    assert todo and resumed == record  # ID is missing: the partial record is completed, not recomputed
    record["points"] += [{"method": "ID", "target_fraction": f} for f in (0.7, 0.4)]
    R.write_json(path.with_suffix(".partial"), record)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=False) == (False, record)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=True) == (True, None)
    other = dataclasses.replace(config, steps=config.steps + 1)
    assert R.pending(path, other, methods, (0.7, 0.4), overwrite=False) == (True, None)  # another model: afresh


def _run(out: pathlib.Path) -> str:
    command = [sys.executable, str(BENCHMARKS / "real_models.py"), "--quick", "--out", str(out)]
    command += ["--cache", str(out / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.integration
def test_quick_run_writes_raw_json_resumes_and_reports(tmp_path):
    import real_models

    _run(tmp_path)
    raw = sorted((tmp_path / "raw-quick").glob("*.json"))
    assert [p.name for p in raw] == ["cnn_s0.json", "lm-gelu_s0.json"]
    assert not list((tmp_path / "raw-quick").glob("*.partial"))
    for path in raw:
        record = json.loads(path.read_text())
        assert {"family", "seed", "config", "training", "sites", "original", "points"} <= set(record)
        expected = {(m, f) for m in real_models.QUICK_METHODS for f in real_models.QUICK_SIZES}
        assert {(p["method"], p["target_fraction"]) for p in record["points"]} == expected
        ok = [p for p in record["points"] if "error" not in p]
        assert ok, record["points"]
        for p in ok:
            assert POINT_FIELDS <= set(p), POINT_FIELDS - set(p)
            assert 0 < p["realised_fraction"] <= p["target_fraction"] + 0.05
            assert p["params"] < record["original"]["params"] and p["latency_b1_us"] > 0
        metric = "test_bpb" if record["family"].startswith("lm") else "test_accuracy"
        assert all(np.isfinite(p[metric]) for p in ok) and np.isfinite(record["original"][metric])
        for p in record["points"]:
            assert "error" in p or "wall_s" in p  # a refusal carries its message
    mor = [p for p in json.loads(raw[0].read_text())["points"] if p["method"] == "merge_or_remove"]
    assert all("error" not in p for p in mor)  # channels are cut by merge_or_remove
    report = (tmp_path / "quick" / "real_models.md").read_text()
    assert "## lm-gelu" in report and "## cnn" in report and "exact p" in report

    before = {p: p.stat().st_mtime_ns for p in raw}
    stdout = _run(tmp_path)  # a rerun skips the finished jobs
    assert stdout.count("complete, skipped") == 2 and "computing" not in stdout
    assert {p: p.stat().st_mtime_ns for p in raw} == before
