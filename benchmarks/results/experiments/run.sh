#!/bin/sh
# Phase 1: every data set × seeds 0-2 of the 2×64 networks with the core methods; phase 2: everything else.
cd /work/main
nice -n 10 python3 benchmarks/experiments.py --seeds 3 --no-wide --methods "lump structural" "lump dynamical" \
  "exact lump" "OBS (ZipLM)" "OSSCAR" "ID" "FLAP" "fold" "ZipIt + REPAIR" "Neuron Merging" "whitened low-rank" \
  "structured wanda" "magnitude" "Wanda"
nice -n 10 python3 benchmarks/experiments.py
