"""Test configuration: float64 on (exactness is tested to 1e-10), jaxtyping annotations checked at run time,
strict dtype promotion, hypothesis CI profile.

- Every jaxlump module is imported here under `jaxtyping.install_import_hook(..., "beartype.beartype")`, before any
  test module imports jaxlump, so every annotated function and `eqx.Module` is checked at run time (modules that
  jaxlump imports lazily are imported here too, or they would escape the hook).
- Tests of what a *user* sees for bad input (test names containing `bad`, `refuse`, `reject` or `invalid`, or marked
  `user_errors`) run with that checker off: a user does not run it, and jaxlump's own messages are what they test.
- Compiled programs are released after every test module (memory stays bounded; a long run once crashed inside XLA's
  compiler) and kept in a disk cache for the run, which is removed at exit.
- The default run is spread over the cores by pytest-xdist (`-n auto --dist loadfile` in pyproject.toml: a test
  module stays in one worker, so its fixtures and compiled programs are shared); `-n 0` runs in this process.
- Tests marked `background(argv, **popen_options)` (the notebooks, the docs build) need only the outcome of one
  subprocess. Under pytest-xdist their modules are moved to the front, so they are handed out first, and each
  test runs its subprocess. In one process (`-n 0`) the subprocesses start when collection ends, one at a time on
  a worker thread, so they run on the second core while this process runs the other tests; the test (fixture
  `background`) waits for its own.
- Strict dtype promotion (`jax.numpy_dtype_promotion("strict")`: no implicit int → float or float32 → float64
  promotion) for the test modules in `STRICT_PROMOTION`, whose code paths are clean; `JAXLUMP_STRICT_PROMOTION=all`
  turns it on for every test, to find what remains.
"""

import atexit
import importlib
import os
import pkgutil
import re
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import jax

jax.config.update("jax_enable_x64", True)
# One compilation cache on disk for the whole run, shared through the environment by every process of it: the
# pytest-xdist workers and the subprocesses the tests start (notebooks, the CLI, fresh-process checks) compile a
# program once between them. `_release_compiled_programs` drops the in-memory programs after each module, and a later
# module that compiles the same program reads it back too. The process that creates the folder removes it at exit.
# (A program holding a host callback — an `eqx.error_if` inside `jit` — is never cached: keep such checks at the
# public boundary.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlump-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import jaxtyping  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

with install_import_hook("jaxlump", "beartype.beartype"):
    import jaxlump

    for _module in pkgutil.walk_packages(jaxlump.__path__, "jaxlump."):
        if _module.name != "jaxlump.__main__":
            importlib.import_module(_module.name)

STRICT_PROMOTION = frozenset(
    {
        "test_errors",
        "test_info",
        "test_reconstruct",
        "test_reduction",
        "test_certificate",
        "test_accounting",
        "test_lump_then_prune",
        "test_magnitude",
        "test_random",
        "test_wanda",
        "test_elimination",
        "test_structured",
        "test_linearity",
        "test_proportional",
    }
)


_USER_ERRORS = re.compile(r"bad|refuse|reject|invalid")


def pytest_configure(config):
    config.addinivalue_line("markers", "user_errors: bad-input tests, run without the jaxtyping run-time checker")
    config.addinivalue_line(
        "markers", "background(argv, timeout, **popen_options): the test reads one subprocess's result (see above)"
    )


class _Background:
    """Subprocesses run one at a time on a worker thread, one per test (`start(item)` returns its future)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._futures, self._running = {}, set()

    def start(self, item):
        if item.nodeid not in self._futures:
            marker = item.get_closest_marker("background")
            self._futures[item.nodeid] = self._pool.submit(self._run, *marker.args, **marker.kwargs)
        return self._futures[item.nodeid]

    def _run(self, argv, timeout, **options):
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "start_new_session": True}
        with subprocess.Popen(argv, **pipes, **options) as process:
            self._running.add(process)
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise
            finally:
                self._running.discard(process)
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in list(self._running):
            _kill_group(process)


def _kill_group(process):
    """Kill a subprocess and its children (a notebook's kernel): each runs in its own process group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


_BACKGROUND = _Background()


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


# The heaviest default tests of the clean-clone CI run of 2026-12-07 15:21 (8.8–21.6 s each, large compiles; step 1
# took 12 min 34 s with them): run in the second step, so that the first stays near 10 minutes. One planted-duplicate
# test of each compressor family stays in the first step.
HEAVY_DEFAULT_TESTS = frozenset(
    f"tests/{name}"
    for name in (
        "test_targets.py::test_lump_target_by_sweep_matches_lump_at_the_chosen_eps[250]",
        "test_lump_then_prune.py::test_the_default_grid_searches_on_until_the_pruning_can_reach_the_target",
        "test_conformance.py::test_purity_determinism_type_stability_and_info[lump_then_prune-eqx]",
        "test_select.py::test_eps_zero_merges_exactly_the_planted_duplicates[None]",
        "test_registry.py::test_structured_flag_matches_the_result[lump]",
        "test_sweep.py::test_sweep_to_size_returns_the_largest_result_within_the_target",
        "test_training_loop.py::test_target_size_count_and_fraction_schedule",
        "test_sites_masked.py::test_masked_then_shrunk_equals_lump_where_units_merge[False]",
        "test_training_loop.py::test_fifty_steps_five_rounds_keep_dead_neurons_dead",
        "test_experiments.py::test_every_point_of_a_sweep_method_carries_its_share_of_the_sweep",
        "test_adapters_eqx.py::test_mlp_round_trip",
        "test_targets.py::test_exact_lump_changes_no_output",
        "test_encoding_dynamical.py::test_dynamical_lumping_inherits_the_unfrozen_encoding",
        "test_lump.py::test_dynamical_discrepancy_recovers_planted_groups[False]",
        "test_errors.py::test_public_flags_refuse_non_bools[lump_throw]",
        "test_targets.py::test_widths_target_is_met_within_one_unit_in_every_layer[lump]",
        "test_heads_nnx.py::test_a_planted_duplicate_head_goes_at_eps_zero_and_the_output_does_not_change",
        "test_rounds.py::test_eps_zero_merges_exactly_the_planted_duplicates[strategy0]",
        "test_info.py::test_stacked_infos_show_ranges",
        "test_sweep.py::test_any_grid_length_and_no_recompile_for_a_new_grid_of_the_same_length",
        "test_training_loop.py::test_plain_adam_revives_merged_neurons_finetune_does_not",
        "test_reconstruct.py::test_eps_zero_leaves_an_unmerged_float32_network_bit_for_bit",
        "test_certificate.py::test_lift_computes_the_compressed_function",
        "test_greedy.py::test_restricted_candidates_carry_exact_costs_and_fit",
        "test_training_loop.py::test_flax_nnx_optimizer",
        # the other cases of parametrized tests moved above, which then paid their compilation in step 1 (8–17 s
        # each in the clean-clone run of 2026-12-07 16:28), and two more of that run's heaviest
        "test_select.py::test_eps_zero_merges_exactly_the_planted_duplicates[1]",
        "test_targets.py::test_lump_target_by_sweep_matches_lump_at_the_chosen_eps[0.3]",
        "test_sites_masked.py::test_masked_then_shrunk_equals_lump_where_units_merge[True]",
        "test_rounds.py::test_eps_zero_merges_exactly_the_planted_duplicates[strategy1]",
        "test_lump.py::test_dynamical_discrepancy_recovers_planted_groups[True]",
        "test_heads_nnx.py::test_compress_to_k_heads_gives_a_module_that_is_multi_head_attention_of_the_kept_heads",
        "test_channels.py::test_the_consumer_refit_is_the_least_squares_solution",
    )
)


def pytest_itemcollected(item):
    if item.nodeid in HEAVY_DEFAULT_TESTS:
        item.add_marker(pytest.mark.integration)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, modules with `background` tests first (stable otherwise), so the longest units of work
    are handed out first instead of last. (In one process they stay in place: their subprocesses run meanwhile.)"""
    if not _is_xdist_worker(config):
        return
    heavy = {item.module.__name__ for item in items if item.get_closest_marker("background") is not None}
    items.sort(key=lambda item: item.module.__name__ not in heavy)


def pytest_collection_finish(session):
    # Under pytest-xdist every worker collects every test; its test starts the subprocess when it runs instead.
    if session.config.option.collectonly or _is_xdist_worker(session.config):
        return
    for item in session.items:
        if item.get_closest_marker("background") is not None:
            _BACKGROUND.start(item)


def pytest_sessionfinish(session):
    _BACKGROUND.close()


@pytest.fixture
def background(request) -> subprocess.CompletedProcess:
    """The finished subprocess of this test's `background` marker."""
    return _BACKGROUND.start(request.node).result()


@pytest.fixture(autouse=True)
def _user_errors_unchecked(request):
    if _USER_ERRORS.search(request.node.originalname or request.node.name) or request.node.get_closest_marker(
        "user_errors"
    ):
        jaxtyping.config.update("jaxtyping_disable", True)
        try:
            yield
        finally:
            jaxtyping.config.update("jaxtyping_disable", False)
    else:
        yield


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    module = request.module.__name__.rsplit(".", 1)[-1]
    if module in STRICT_PROMOTION or os.environ.get("JAXLUMP_STRICT_PROMOTION") == "all":
        with jax.numpy_dtype_promotion("strict"):
            yield
    else:
        yield


settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: one process compiles thousands of them, and keeping
    them all grows memory without bound (a long run crashed inside XLA's compiler). Measured on six baseline modules
    (2 cores): clearing raised CPU time from 69 s to 92 s (1,619 compiles instead of 1,021) and halved peak memory
    (1.05 GB instead of 1.94 GB); with the disk cache above, clearing costs 71 s (617 programs read back)."""
    yield
    jax.clear_caches()
