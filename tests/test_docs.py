"""The documentation site: the strict mkdocs build passes, every public name is in the API reference, and the
code on the hand-written pages runs."""

import importlib.util
import inspect
import os
import pathlib
import re
import shutil
import sys
import tempfile

import pytest
import yaml

import jaxlump
import jaxlump.baselines
import jaxlump.datasets

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES_WITH_CODE = ["index.md", "choosing_eps.md", "extending.md"]
SITE = pathlib.Path(tempfile.gettempdir()) / f"jaxlump-docs-site-{os.getpid()}"


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _config() -> dict:
    # mkdocs.yml has no custom YAML tags, so the safe loader reads it
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install .[docs])")
@pytest.mark.background(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(SITE)],
    300,
    cwd=ROOT,
    env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
)  # built in a subprocess on the second core while the other tests run (tests/conftest.py)
def test_strict_build_passes(background):
    try:
        assert background.returncode == 0, background.stdout + background.stderr
        assert (SITE / "api" / "index.html").exists()
    finally:
        shutil.rmtree(SITE, ignore_errors=True)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages(_config()["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == on_disk
    assert nav[:3] == ["index.md", "method.md", "choosing_eps.md"]  # pipeline order starts with these


def test_every_public_name_is_in_the_api_reference():
    documented = set(re.findall(r"^::: ([\w.]+)$", (DOCS / "api.md").read_text(), re.MULTILINE))
    public = {
        f"{module.__name__}.{name}"
        for module in (jaxlump, jaxlump.baselines, jaxlump.datasets)
        for name, obj in vars(module).items()
        if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
    }
    assert public - documented == set(), "add these to docs/api.md"
    assert documented - public == set(), "docs/api.md names something that is not public"


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_code_runs(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.DOTALL)
    assert blocks
    for code in blocks:
        exec(compile(code, f"<{page}>", "exec"), {})
