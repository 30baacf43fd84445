"""Dense decompositions that never hand LAPACK a batch on the CPU, so no compiled program of jaxlump can deadlock.

jaxlib's CPU LAPACK kernels (0.10) split a batch of matrices into chunks, schedule the chunks on XLA's intra-op
thread pool and block until they are done. When as many such calls as the pool has threads run at once — the
independent layers of a vmapped `jaxlump.sweep` do — every pool thread waits for work queued behind it and the
process hangs, using no CPU (the 2026-12-02 benchmark: both threads of a 2-core machine in `ParallelBatchMap`
under `lapack_dgesdd_ffi`). A call with a single matrix runs inline on the calling thread and cannot block.

So the functions here take arrays with any leading batch axes (and work under any number of `jax.vmap`s, through a
`custom_vmap` rule) and, when the program runs on the CPU, factorise the matrices one after another in a
`lax.map` loop; on a GPU or TPU the batched solver is kept (`lax.platform_dependent` decides when the program is
lowered). Each matrix goes through the same LAPACK routine either way, so results are identical bit for bit.
These functions are not differentiable (nothing in jaxlump differentiates through a decomposition).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl


def _one_matrix_at_a_time_on_cpu(decomposition: Callable, n_core_dims: tuple[int, ...]) -> Callable:
    """`decomposition` (of unbatched arrays whose `k`-th argument has `n_core_dims[k]` dimensions) extended to
    leading batch axes: batched on accelerators, a sequential loop over the batch on the CPU."""

    @jax.custom_batching.custom_vmap
    def unbatched(*args):
        return decomposition(*args)

    @unbatched.def_vmap
    def _vmap_rule(axis_size, in_batched, *args):
        args = tuple(
            a if batched else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, batched in zip(args, in_batched)
        )
        out = jax.lax.platform_dependent(
            *args,
            cpu=lambda *xs: jax.lax.map(lambda one: unbatched(*one), xs),
            default=jax.vmap(decomposition),
        )
        return out, jax.tree_util.tree_map(lambda _: True, out)

    def apply(*args):
        batch_shape = jnp.shape(args[0])[: jnp.ndim(args[0]) - n_core_dims[0]]
        if not batch_shape:
            return unbatched(*args)
        flat = tuple(jnp.reshape(a, (-1, *jnp.shape(a)[len(batch_shape) :])) for a in args)
        out = jax.vmap(unbatched)(*flat)
        return jax.tree_util.tree_map(lambda o: jnp.reshape(o, (*batch_shape, *o.shape[1:])), out)

    return apply


cholesky = _one_matrix_at_a_time_on_cpu(jnp.linalg.cholesky, (2,))
"""Lower Cholesky factors of symmetric positive definite matrices `(..., n, n)` (NaN where a factor fails)."""

cho_solve = _one_matrix_at_a_time_on_cpu(lambda factor, rhs: jsl.cho_solve((factor, True), rhs), (2, 2))
"""`M⁻¹ B` from `cholesky(M)` (`(..., n, n)`) and right-hand sides `B` (`(..., n, k)`)."""

eigh = _one_matrix_at_a_time_on_cpu(jnp.linalg.eigh, (2,))
"""Eigenvalues (ascending) and eigenvectors of symmetric matrices `(..., n, n)`."""

inv = _one_matrix_at_a_time_on_cpu(jnp.linalg.inv, (2,))
"""Inverses of square matrices `(..., n, n)`."""

spectral_norm = _one_matrix_at_a_time_on_cpu(lambda w: jnp.linalg.norm(w, 2), (2,))
"""Largest singular values `‖W‖₂` of matrices `(..., m, n)`."""
