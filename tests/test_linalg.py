"""`jaxlump._reconstruction.linalg`: the same numbers as JAX's batched decompositions, and no compiled program of
jaxlump hands LAPACK a batch (the cause of `jaxlump.sweep`'s deadlock on CPU, issue 27)."""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
import pytest

from jaxlump._reconstruction import linalg as _linalg

HERE = pathlib.Path(__file__).parent
PROGRAMS = HERE / "_lapack_programs.py"
_LAPACK_CALL = re.compile(r"custom_call @(lapack_\w+)\(.* : \(tensor<([0-9x]+)x[a-z]+[0-9]*>")


def _spd(key, shape):
    a = jr.normal(key, (*shape[:-1], shape[-1] + 2))
    return a @ jnp.swapaxes(a, -1, -2) + 0.1 * jnp.eye(shape[-1])


def _batched_reference(fn, *args, depth):
    for _ in range(depth):
        fn = jax.vmap(fn)
    return fn(*args)


@pytest.mark.parametrize("transform", ["leading-axes", "vmap", "jit-vmap-vmap"])
def test_bit_for_bit_equal_to_the_batched_decompositions(transform):
    m = _spd(jr.key(0), (3, 4, 5, 5))
    w = jr.normal(jr.key(1), (3, 4, 6, 5))
    rhs = jr.normal(jr.key(2), (3, 4, 5, 2))
    factor = jnp.linalg.cholesky(m)
    cases = {
        "cholesky": (_linalg.cholesky, jnp.linalg.cholesky, (m,)),
        "cho_solve": (_linalg.cho_solve, lambda f, r: jsl.cho_solve((f, True), r), (factor, rhs)),
        "eigh": (_linalg.eigh, jnp.linalg.eigh, (m,)),
        "inv": (_linalg.inv, jnp.linalg.inv, (m,)),
        "spectral_norm": (_linalg.spectral_norm, lambda a: jnp.linalg.norm(a, 2), (w,)),
    }
    for name, (ours, reference, args) in cases.items():
        if transform == "leading-axes":
            got = ours(*args)
        elif transform == "vmap":
            got = jax.vmap(ours)(*args)
        else:
            got = jax.jit(jax.vmap(jax.vmap(ours)))(*args)
        want = _batched_reference(reference, *args, depth=2)
        for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(r), err_msg=f"{name} under {transform}")


def test_an_unbatched_argument_under_vmap_is_broadcast():
    m = _spd(jr.key(3), (5, 5))
    rhs = jr.normal(jr.key(4), (6, 5, 2))
    factor = _linalg.cholesky(m)
    got = jax.vmap(_linalg.cho_solve, in_axes=(None, 0))(factor, rhs)
    np.testing.assert_array_equal(got, jax.vmap(lambda r: jsl.cho_solve((factor, True), r))(rhs))


def _lapack_batches(directory: pathlib.Path) -> list[tuple[str, str, int]]:
    """(program, LAPACK routine, batch size) of every LAPACK call in the StableHLO programs JAX dumped."""
    calls = []
    for path in sorted(directory.glob("*.mlir")):
        for routine, dims in _LAPACK_CALL.findall(path.read_text()):
            shape = [int(d) for d in dims.split("x")]
            calls.append((path.name, routine, math.prod(shape[:-2])))
    return calls


def _run_dumped(tmp_path, what: str) -> list[tuple[str, str, int]]:
    """Run `_lapack_programs.py WHAT 12 8` in a fresh process under a watchdog (a deadlock fails the test instead of
    hanging it), every compiled program dumped; its LAPACK calls."""
    env = {**os.environ, "JAX_DUMP_IR_TO": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(PROGRAMS), what, "12", "8"], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["widths"][0] == [3, 12, 12, 2]
    return _lapack_batches(tmp_path)


@pytest.mark.integration  # a whole sweep compiled and dumped in a fresh process (~14 s): the second test step
def test_the_sweeps_programs_hand_lapack_one_matrix_at_a_time(tmp_path):
    """The sweep with refit (vmapped over ε: Cholesky, triangular solves, the eigh fallback, the certificate's SVD):
    each LAPACK call factorises one matrix."""
    calls = _run_dumped(tmp_path, "sweep")
    routines = {routine for _, routine, _ in calls}
    assert {"lapack_dpotrf_ffi", "lapack_dtrsm_ffi", "lapack_dsyevd_ffi", "lapack_dgesdd_ffi"} <= routines, routines
    assert [call for call in calls if call[2] != 1] == []


@pytest.mark.slow
def test_no_compiled_program_hands_lapack_a_batch(tmp_path):
    """Also merge_or_remove (its refit's inverse), reconstruct of a pruned model (one system per row), lump and a
    wrap_optax round with refit."""
    calls = _run_dumped(tmp_path, "all")
    assert "lapack_dgetrf_ffi" in {routine for _, routine, _ in calls}
    assert [call for call in calls if call[2] != 1] == []


@pytest.mark.slow
def test_fifty_sweeps_in_fresh_processes_never_hang_and_agree():
    """The deadlock struck about one benchmark run in four: 50 sweeps with refit, each in a fresh process under a
    watchdog; every run gives the same partitions and certificate values."""
    records = set()
    for _ in range(50):
        done = subprocess.run(
            [sys.executable, str(PROGRAMS), "sweep", "64", "48"], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        records.add(done.stdout.splitlines()[-1])
    assert len(records) == 1
