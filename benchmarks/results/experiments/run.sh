#!/bin/sh
# The staged full run (resumes: a raw file that exists is completed with the methods it lacks).
# Phase 1: every data set × 5 seeds of the 2×64 networks, the core methods and jaxlump's default (merge_or_remove);
# phase 2: every other method; phase 3: the 2×256 subset (3 seeds).
cd "$(dirname "$0")/../../.."
core() {
  nice -n 10 python3 benchmarks/experiments.py "$@" --methods "lump structural" "lump dynamical" "exact lump" \
    "merge_or_remove" "merge_or_remove uniform" "OBS (ZipLM)" "OSSCAR" "ID" "FLAP" "fold" "ZipIt + REPAIR" \
    "Neuron Merging" "whitened low-rank" "structured wanda" "magnitude" "Wanda"
}
core --no-wide
nice -n 10 python3 benchmarks/experiments.py --no-wide
core --seeds 3 --datasets glycolytic abalone protein
