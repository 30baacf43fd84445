"""The benchmark's statistics (exact Wilcoxon signed-rank test), its generated claims, and its `--quick` run (in the
integration step that CI runs after the default one; 2 min 54 s on the 2-core machine beside three benchmark
processes)."""

import itertools
import json
import math
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))

from experiments_report import wilcoxon_signed_rank  # noqa: E402


def _ranks(d):
    m = np.abs(d)
    return np.asarray([np.mean([1 + k for k, v in enumerate(np.sort(m)) if v == x]) for x in m])


def _enumerated_p(d):
    """Two-sided p by enumerating all 2^n sign patterns of the ranks (the definition, independent of the DP)."""
    d = np.asarray(d, float)
    d = d[d != 0]
    ranks = _ranks(d)
    observed = ranks[d > 0].sum()
    totals = np.asarray(
        [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=d.size)]
    )
    return min(1.0, 2 * min(np.mean(totals <= observed + 1e-9), np.mean(totals >= observed - 1e-9)))


def test_known_values():
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5])[1] == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([-1, -2, -3, -4, -5, -6])[1] == pytest.approx(2 / 64)
    w, p, n = wilcoxon_signed_rank([0.0, 0.0])
    assert (p, n) == (1.0, 0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_enumeration_with_ties_and_zeros(seed):
    generator = np.random.default_rng(seed)
    d = np.round(generator.standard_normal(10), 1)  # rounding creates ties
    d[0] = 0.0
    w, p, n = wilcoxon_signed_rank(d)
    assert n == np.count_nonzero(d)
    assert w == pytest.approx(_ranks(d[d != 0])[d[d != 0] > 0].sum())
    assert p == pytest.approx(_enumerated_p(d), abs=1e-12)
    assert wilcoxon_signed_rank(-d)[1] == pytest.approx(p)


def test_large_n_agrees_with_the_normal_approximation():
    generator = np.random.default_rng(0)
    d = generator.standard_normal(60) + 0.15
    w, p, n = wilcoxon_signed_rank(d)
    mean, var = n * (n + 1) / 4, n * (n + 1) * (2 * n + 1) / 24
    z = (w - mean) / math.sqrt(var)
    normal_p = math.erfc(abs(z) / math.sqrt(2))
    assert 0.01 < p < 0.9 and p == pytest.approx(normal_p, abs=0.01)


@pytest.mark.integration
def test_quick_run_writes_raw_json_and_tables(tmp_path):
    import experiments

    experiments.main(["--quick", "--out", str(tmp_path), "--max-steps", "500", "--cache", str(tmp_path / "cache")])
    raw = sorted((tmp_path / "raw-quick").glob("*.json"))
    assert [p.name for p in raw] == ["abalone_w64_s0.json", "abalone_w64_s1.json"]
    record = json.loads(raw[0].read_text())
    ok = [p for p in record["points"] if "error" not in p]
    assert ok and all(p["B"]["realised_size"] <= p["target_size"] for p in ok if p["method"] != "exact lump")
    for name in ("track_A.md", "track_B.md", "track_C.md", "headline.md", "findings.md", "wilcoxon.md", "track_B.png"):
        assert (tmp_path / "quick" / name).exists()
    (run,) = json.loads((tmp_path / "runs-quick.json").read_text())
    assert run["processes"] == 1 and run["computed"] == run["jobs"] == 2 and run["wall_s"] > 0
    assert not list((tmp_path / "raw-quick").glob("*.running"))  # the group's claim is released
    import provenance

    summary = json.loads((tmp_path / "quick" / "summary.json").read_text())
    for block in (record["provenance"], summary["provenance"]):  # the code that computed them, up to date
        assert {"benchmarks/experiments.py", "jaxlump/_methods/greedy.py"} <= set(block["sources"])
        assert provenance.stale(block) == []
    assert "write_report" in summary["provenance"]["sources"]["benchmarks/experiments_report.py"]


def test_job_groups_put_each_network_shape_in_one_group_longest_first():
    import argparse

    import experiments

    args = argparse.Namespace(quick=False, datasets=None, seeds=5, no_wide=False, only_seeds=None)
    groups = experiments.job_groups(args)
    shapes = [{(name, width) for name, _, width in g} for g in groups]
    assert all(len(s) == 1 for s in shapes) and len({next(iter(s)) for s in shapes}) == len(groups)
    assert [g[0][2] for g in groups] == [256] * 3 + [64] * 8  # the wide (longest) jobs first
    assert sum(map(len, groups)) == 3 * experiments.WIDE_SEEDS + 8 * 5
    args.no_wide, args.only_seeds = True, [4]
    assert experiments.job_groups(args) == [[(d, 4, 64)] for d in experiments.DATASETS]


def _record(seed, mse):
    """A raw record of one (data set, seed): `mse[method][fraction]` is its test MSE on both tracks."""
    structured = {"merge_or_remove": True, "OBS (ZipLM)": True, "lump structural": True, "magnitude": False}
    points = [
        {"method": m, "structured": structured[m], "target_fraction": f, "target_size": 100,
         "A": {"realised_size": 100, "test_mse": v}, "B": {"realised_size": 100, "test_mse": v}}
        for m, per in mse.items() for f, v in per.items()
    ]  # fmt: skip
    return {"dataset": "toy", "width": 64, "seed": seed, "original": {"test_mse": 0.1}, "points": points}


def test_findings_count_wins_and_compare_methods_over_the_same_seeds_only():
    import experiments_report as report

    records = [
        _record(0, {"merge_or_remove": {0.35: 1.0, 0.1: 2.0}, "OBS (ZipLM)": {0.35: 1.5, 0.1: 1.0},
                    "lump structural": {0.35: 3.0, 0.1: 3.0}, "magnitude": {0.35: 4.0, 0.1: 5.0}}),
        _record(1, {"merge_or_remove": {0.35: 1.0, 0.1: 2.0}, "OBS (ZipLM)": {0.35: 1.5, 0.1: 1.0},
                    "lump structural": {0.35: 3.0}, "magnitude": {0.35: 4.0, 0.1: 5.0}}),
    ]  # fmt: skip
    # lump structural lacks seed 1 at 10 %: it must not be ranked there (its seed-0 mean would look comparable)
    means = report._means(report.points(records, "B")[("toy", 64)], 0.1)
    assert set(means) == {"merge_or_remove", "OBS (ZipLM)", "magnitude"}
    _, headline = report.headline(records)
    _, criterion = report.criterion_table(records)
    assert criterion["toy/w64"]["wins"] == 1 and criterion["toy/w64"]["levels"] == 2
    assert criterion["toy/w64"]["losses"] == [(0.1, "OBS (ZipLM)", 2.0)]
    text = report.findings(records, headline, criterion)
    assert "at 1 of the 2 (data set, size) levels" in text
    assert "toy 10% (OBS (ZipLM), 2.00×)" in text
    assert "lower test MSE in 2 of 4 runs" in text  # OBS: merge_or_remove wins both 35 % pairs, loses both 10 %
    assert "behind the best structured one in 2 of 2" in text


def test_an_overwrite_run_is_continued_by_the_same_command_only_while_unfinished():
    import experiments

    argv = ["--overwrite", "--processes", "2"]
    stopped = {"run": "2026-01-01T00:00:00Z", "complete": False, "argv": argv}
    assert experiments.run_id([stopped], argv, True, "now") == stopped["run"]
    assert experiments.run_id([stopped], argv + ["--seeds", "3"], True, "now") == "now"  # another run's arguments
    assert experiments.run_id([stopped], argv, False, "now") == "now"  # without --overwrite nothing is recomputed
    assert experiments.run_id([{**stopped, "complete": True}], argv, True, "now") == "now"
    assert experiments.run_id([], argv, True, "now") == "now"
    # how many processes share the jobs does not change their results: the run goes on
    assert experiments.run_id([stopped], ["--overwrite", "--processes=1"], True, "now") == stopped["run"]
    assert experiments.run_id([stopped], ["--processes", "1", "--overwrite"], True, "now") == stopped["run"]
    assert experiments.run_id([stopped], ["--processes", "1"], True, "now") == "now"  # not the same arguments


def test_a_raw_file_is_replaced_only_by_a_complete_job(tmp_path):
    import argparse

    import experiments

    path = tmp_path / "toy_w64_s0.json"
    old = {"run": "old", "points": [{"method": "ID"}, {"method": "FLAP"}]}
    path.write_text(json.dumps(old))
    args = argparse.Namespace(overwrite=True, run_id="new")
    assert experiments.pending(path, ["ID", "FLAP"], args) == (True, None)  # another run's file is recomputed
    half = {"run": "new", "points": [{"method": "ID"}]}
    experiments.save(path, ["ID", "FLAP"], half)
    assert json.loads(path.read_text()) == old  # the committed file is untouched until the job is complete
    assert experiments.pending(path, ["ID", "FLAP"], args) == (True, half)  # the continuation completes it
    experiments.save(path, ["ID", "FLAP"], {**half, "points": old["points"]})
    assert json.loads(path.read_text())["run"] == "new" and not path.with_suffix(".partial").exists()
    assert experiments.pending(path, ["ID", "FLAP"], args)[0] is False


def test_every_point_of_a_sweep_method_carries_its_share_of_the_sweep():
    import dataclasses
    import time

    import equinox as eqx
    import experiments
    import jax.numpy as jnp
    import jax.random as jr

    import jaxlump
    from jaxlump._model import to_chain
    from jaxlump.baselines import rank_bounds

    pause = 1.5

    def slow_sizes(model, x, knobs):  # each of the sweep's two grids takes at least `pause`
        time.sleep(pause)
        return experiments._flap_sizes(model, x, knobs)

    method = dataclasses.replace(experiments.METHODS["FLAP"], sizes=slow_sizes)
    model = to_chain(eqx.nn.MLP(3, 1, 8, 2, activation=jnp.tanh, dtype=jnp.float64, key=jr.key(0)))
    x = jr.normal(jr.key(1), (64, 3), jnp.float64)
    test = (np.zeros((16, 3)), np.zeros((16, 1)))
    base = int(jaxlump.cost(model).dense_params)
    record = {"dataset": "toy", "width": 8, "points": []}
    sizes = (0.9, 0.6, 0.35)
    bounds, start = rank_bounds(model, x), time.perf_counter()
    experiments._add_points(record, model, {"FLAP": method}, sizes, base, bounds, x, test, 1, start, lambda r: None)
    assert [p.get("error") for p in record["points"]] == [None] * len(sizes)
    shares = [p["search_s"] for p in record["points"]]
    assert min(shares) >= 2 * pause / len(sizes)  # not only the first point (the sweep's total was cut to 1/n)
