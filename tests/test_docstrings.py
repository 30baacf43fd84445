"""Every ```python example in a public docstring runs (STYLE rule 8)."""

import inspect
import re

import pytest

import jaxlump
import jaxlump.baselines
import jaxlump.datasets

_EXAMPLE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _public_objects():
    for module in (jaxlump, jaxlump.baselines, jaxlump.datasets):
        for name in sorted(dir(module)):
            obj = getattr(module, name)
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                yield f"{module.__name__}.{name}", obj


EXAMPLES = [
    pytest.param(code, id=f"{name}[{i}]")
    for name, obj in _public_objects()
    for i, code in enumerate(_EXAMPLE.findall(inspect.cleandoc(obj.__doc__ or "")))
]


def test_the_public_api_has_examples():
    documented = {p.id.split("[")[0] for p in EXAMPLES}
    for required in (
        "jaxlump.lump",
        "jaxlump.lump_masked",
        "jaxlump.shrink",
        "jaxlump.reconstruct",
        "jaxlump.lump_then_prune",
        "jaxlump.cost",
        "jaxlump.baselines.magnitude",
        "jaxlump.baselines.compress_to",
    ):
        assert required in documented


@pytest.mark.integration  # the documentation's examples run with the docs pages' code, in the second test step
@pytest.mark.parametrize("code", EXAMPLES)
def test_docstring_example_runs(code):
    exec(compile(code, "<docstring example>", "exec"), {})
