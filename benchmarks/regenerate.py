"""Remake the committed results whose code has changed, from a clean worktree of the current commit.

    python3 benchmarks/regenerate.py                # the plan: which results are stale, the commands that remake them
    python3 benchmarks/regenerate.py --run          # run them, then copy the new files into benchmarks/results/
    python3 benchmarks/regenerate.py --run --all    # every result, stale or not

A result records the code that produced it (`benchmarks/provenance.py`); once that code changes, the test run refuses
to let README.md or docs/ quote it. This script runs the commands that remake the stale ones in a `git worktree` of
HEAD (so each result records a commit and no uncommitted file), in two streams: the quality benchmarks one after
another in one, the timing benchmarks one after another in the other (each timing run records the load it ran under).
It is resumable: the worktree is kept under the system's temporary folder, named after the commit, and a command that
finished is not run again. Logs are in the worktree's `.regenerate/` folder. It commits nothing.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import provenance

# Every committed results file and the commands that write it, in order (a file of several parts takes several).
PLAN = {
    "fair_comparison.json": [["fair_comparison.py", "--overwrite"]],
    "ablation_lumping.json": [["ablation_lumping.py", "--overwrite"]],
    "allocation.json": [["allocation.py", "--overwrite"]],
    "perf_merge.json": [
        ["perf_merge.py", "--part", "quality", "--overwrite"],
        ["perf_merge.py", "--part", "speed", "--overwrite"],
    ],
    "perf_scale.json": [
        ["perf_scale.py", "--part", part, "--overwrite"] for part in ("acceptance", "scaling", "small")
    ],
    "perf_kernels.json": [["perf_kernels.py", "--overwrite"]],
    "perf_numpy.json": [["perf_numpy.py", "--overwrite"]],
    "perf_sweep.json": [["perf_sweep.py", "--overwrite"]],
    "perf_scaling_targets.json": [["perf_scaling.py", "--targets-only", "--overwrite"]],
    "perf_training.json": [["perf_training.py", "--overwrite"]],
    "perf_groups_quality.json": [["perf_groups.py", "--part", "quality", "--overwrite"]],
    "perf_groups_latency.json": [["perf_groups.py", "--part", "latency", "--overwrite"]],
}
# the rest time something
QUALITY = ("fair_comparison.json", "ablation_lumping.json", "allocation.json", "perf_groups_quality.json")


def stale_results(everything: bool) -> list[str]:
    """The planned results files whose recorded code has changed (all of them with `everything`)."""
    chosen = []
    for name in PLAN:
        block = json.loads((provenance.RESULTS / name).read_text()).get("provenance")
        if everything or block is None or provenance.stale(block):
            chosen.append(name)
    return chosen


def _worktree() -> pathlib.Path:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=provenance.REPO, check=True, capture_output=True, text=True
    ).stdout.strip()
    path = pathlib.Path(tempfile.gettempdir()) / f"jaxlump-regenerate-{commit[:12]}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=provenance.REPO, check=True)
    (path / ".regenerate").mkdir(exist_ok=True)
    return path


def _run_stream(worktree: pathlib.Path, names: list[str]) -> list[str]:
    """Run the commands of `names` one after another; returns the failures."""
    failed = []
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    for name in names:
        for index, command in enumerate(PLAN[name]):
            done = worktree / ".regenerate" / f"{name}.{index}.done"
            if done.exists():
                continue
            log = worktree / ".regenerate" / f"{name}.{index}.log"
            with log.open("w") as out:
                code = subprocess.run(
                    [sys.executable, f"benchmarks/{command[0]}", *command[1:]],
                    cwd=worktree,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ).returncode
            if code != 0:
                failed.append(f"{' '.join(command)} (exit {code}; log {log})")
                break
            done.touch()
    return failed


def _copy_back(worktree: pathlib.Path, names: list[str]) -> list[str]:
    """Copy each remade file and its table and figure (same stem) into the repository's results folder."""
    copied = []
    for name in names:
        stem = pathlib.Path(name).stem
        for made in sorted((worktree / "benchmarks" / "results").glob(f"{stem}.*")):
            shutil.copy2(made, provenance.RESULTS / made.name)
            copied.append(made.name)
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the commands and copy the results back")
    parser.add_argument("--all", action="store_true", help="every result, not only the stale ones")
    args = parser.parse_args()
    names = stale_results(args.all)
    for name in names:
        print(f"{name}: " + "; ".join(" ".join(c) for c in PLAN[name]))
    if not names:
        print("every planned result is up to date")
    if not args.run or not names:
        return
    worktree = _worktree()
    streams = [[n for n in names if n in QUALITY], [n for n in names if n not in QUALITY]]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failed = [f for result in pool.map(lambda s: _run_stream(worktree, s), streams) for f in result]
    if failed:
        sys.exit("failed, nothing copied back:\n  " + "\n  ".join(failed))
    print("copied back: " + ", ".join(_copy_back(worktree, names)))


if __name__ == "__main__":
    main()
