#!/bin/sh
# The full run in one command (resumes: a raw file that exists is completed with the methods it lacks): 8 data sets
# × 5 seeds of the 2×64 networks and the 2×256 subset (3 data sets × 3 seeds), every method, two processes sharing
# the jobs a data set and width at a time. Add --overwrite to recompute everything.
cd "$(dirname "$0")/../../.."
exec nice -n 10 python3 benchmarks/experiments.py --processes 2 "$@"
