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


def test_an_unfinished_record_is_resumed_a_finished_one_skipped_and_one_of_changed_code_recomputed(tmp_path):
    import dataclasses

    import provenance
    import real_models as R

    config = R.QUICK_FAMILIES["lm-gelu"]
    methods = {k: R.METHODS[k] for k in ("merge_or_remove", "ID")}
    sites = [{"path": "b.ffn", "unit": "neuron", "width": 8, "producers": ["b.up"], "consumer": "b.down"}]
    unit = ("jaxlump/_methods/greedy.py", "Greedy")
    current = {"sources": {unit[0]: {unit[1]: provenance.unit_hash(*unit)}}}
    record = {"family": "lm-gelu", "config": R.jsonable(dataclasses.asdict(config)), "sites": sites, "points": []}
    record["provenance"] = current
    record["points"] = [{"method": "merge_or_remove", "target_fraction": f} for f in (0.7, 0.4)]
    path = tmp_path / "lm-gelu_s0.json"
    R.write_json(path.with_suffix(".partial"), record)
    todo, resumed = R.pending(path, config, methods, (0.7, 0.4), overwrite=False)
    assert todo and resumed == record  # ID is missing: the partial record is completed, not recomputed
    record["points"] += [{"method": "ID", "target_fraction": f} for f in (0.7, 0.4)]
    R.write_json(path.with_suffix(".partial"), record)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=False) == (True, record)  # to be saved
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=True) == (True, record)  # resumed, not redone
    other = dataclasses.replace(config, steps=config.steps + 1)
    assert R.pending(path, other, methods, (0.7, 0.4), overwrite=False) == (True, None)  # another model: afresh
    path.with_suffix(".partial").rename(path)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=False) == (False, record)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=True) == (True, None)  # a complete file is redone
    record["provenance"] = {"sources": {unit[0]: {unit[1]: "0" * 16}}}  # computed by code that has changed since
    R.write_json(path, record)
    assert R.pending(path, config, methods, (0.7, 0.4), overwrite=False) == (True, None)


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
        recovered = [p for p in ok if real_models.METHODS[p["method"]].recover]
        assert recovered and all(np.isfinite(p["recovered"][metric]) for p in recovered)
    mor = [p for p in json.loads(raw[0].read_text())["points"] if p["method"] == "merge_or_remove"]
    assert all("error" not in p for p in mor)  # channels are cut by merge_or_remove
    report = (tmp_path / "quick" / "real_models.md").read_text()
    assert "## lm-gelu" in report and "## cnn" in report and "exact p" in report
    assert (tmp_path / "quick" / "real_models.png").stat().st_size > 0

    before = {p: p.stat().st_mtime_ns for p in raw}
    stdout = _run(tmp_path)  # a rerun skips the finished jobs
    assert stdout.count("complete, skipped") == 2 and "computing" not in stdout
    assert {p: p.stat().st_mtime_ns for p in raw} == before


def _synthetic(seed: int, metrics: dict, dense: float) -> dict:
    """A raw record of family `lm-x` whose points have the test bits/byte `metrics[method][size]` (`None`: refused)."""
    points = []
    for method, by_size in metrics.items():
        for fraction, value in by_size.items():
            point = {"method": method, "scope": "neurons", "target_fraction": fraction, "load_before": [1.0]}
            if value is None:
                point["error"] = "TypeError: refused"
            else:
                point.update(test_bpb=value + seed, realised_fraction=fraction, wall_s=1.0, latency_b1_us=1.0,
                             latency_big_us=2.0)  # fmt: skip
                if method == "merge_or_remove":
                    point["recovered"] = {"steps": 5, "test_bpb": value + seed - 0.01}
            points.append(point)
    original = {"test_bpb": dense + seed, "params": 100, "latency_b1_us": 1.0, "latency_big_us": 2.0,
                "latency_big_batch": 8}  # fmt: skip
    return {"family": "lm-x", "seed": seed, "sites": [], "original": original, "points": points}


def test_report_ranks_pairs_and_writes_the_generated_blocks(tmp_path):
    import real_models_report as report

    metrics = {
        "merge_or_remove": {0.7: 3.1, 0.4: 3.5},
        "OBS (ZipLM)": {0.7: 3.0, 0.4: 3.6},
        "lump": {0.7: 3.2, 0.4: None},
        "lump (no refit)": {0.7: 3.3, 0.4: 3.9},
        "structured magnitude": {0.7: 3.4, 0.4: 3.8},
    }
    raw = tmp_path / "raw"
    raw.mkdir()
    for seed in range(3):  # every value shifted by the seed: the differences are the same at every seed
        (raw / f"lm-x_s{seed}.json").write_text(json.dumps(_synthetic(seed, metrics, dense=2.9)))
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- real-models: start -->\nold\n<!-- real-models: end -->\nafter\n")
    report.report(raw, tmp_path / "out", (readme,))

    rows = [row.rstrip(" |") for row in (tmp_path / "out" / "headline.md").read_text().splitlines()[2:]]
    # mean over seeds 0, 1, 2 is the value + 1; dense 3.9
    assert rows[0].split(" | ")[3:7] == [
        "OBS (ZipLM): 4.000 (+0.100)", "4.100 (+0.200), rank 2", "4.200 (+0.300), rank 3", "5"
    ]  # fmt: skip
    assert rows[1].split(" | ")[3:7] == ["merge_or_remove: 4.500 (+0.600)", "4.500 (+0.600), rank 1", "refused", "4"]
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text and rows[0] + " |" in text
    full = (tmp_path / "out" / "real_models.md").read_text()
    # track A: lump without refit is 0.1 worse than magnitude at 0.4 and 0.1 better at 0.7, three seeds each
    assert "| lump (no refit) | structured magnitude | 6 | +0 | 3 of 6 (0 tied) |" in full
    assert "| merge_or_remove | 3.100 → 3.090 | 3.500 → 3.490 |" not in full  # means over seeds: + 1
    assert "| merge_or_remove | 4.100 → 4.090 | 4.500 → 4.490 |" in full
