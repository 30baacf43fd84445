"""Test configuration: float64 on (exactness is tested to 1e-10), jaxtyping annotations checked at run time,
strict dtype promotion, hypothesis CI profile.

- Every jaxlump module is imported here under `jaxtyping.install_import_hook(..., "beartype.beartype")`, before any
  test module imports jaxlump, so every annotated function and `eqx.Module` is checked at run time (modules that
  jaxlump imports lazily are imported here too, or they would escape the hook).
- Tests of what a *user* sees for bad input (test names containing `bad`, `refuse`, `reject` or `invalid`, or marked
  `user_errors`) run with that checker off: a user does not run it, and jaxlump's own messages are what they test.
- Strict dtype promotion (`jax.numpy_dtype_promotion("strict")`: no implicit int → float or float32 → float64
  promotion) for the test modules in `STRICT_PROMOTION`, whose code paths are clean; `JAXLUMP_STRICT_PROMOTION=all`
  turns it on for every test, to find what remains.
"""

import importlib
import os
import pkgutil
import re

import jax

jax.config.update("jax_enable_x64", True)

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
    them all grows memory without bound (a long run crashed inside XLA's compiler)."""
    yield
    jax.clear_caches()
