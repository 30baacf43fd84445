"""Results files record the code that produced them (`benchmarks/provenance.py`), and none is older than its code.

The last test is the check of issue 32: every committed results JSON carries a provenance block, and no function,
method, class body or module statement that ran while it was computed has changed since; README.md and docs/ quote
only results files that exist and pass that check.
"""

import cProfile
import importlib
import json
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import provenance  # noqa: E402

SOURCE = '''\
"""A module."""
import math

SCALE = 2.0


def double(x):
    # a comment
    return SCALE * x


@staticmethod
def decorated(x):
    return [y for y in x]


class Box:
    size: int = 3

    def area(self):
        return lambda: self.size**2
'''


def _units(source):
    return provenance._units(source)


def test_units_are_functions_methods_class_bodies_and_module():
    tokens, spans, classes = _units(SOURCE)
    assert set(tokens) == {"<module>", "double", "decorated", "Box", "Box.area"}
    assert classes == ("Box",)
    lines = SOURCE.splitlines()
    line = {text.strip(): i + 1 for i, text in enumerate(lines)}
    assert provenance._unit_of(SOURCE, line["return lambda: self.size**2"]) == "Box.area"  # a lambda: its method
    assert provenance._unit_of(SOURCE, line["@staticmethod"]) == "decorated"  # code objects start at the decorator
    assert provenance._unit_of(SOURCE, line["return [y for y in x]"]) == "decorated"  # a comprehension
    assert provenance._unit_of(SOURCE, line["class Box:"]) == "Box"
    assert provenance._unit_of(SOURCE, 1) == "<module>"


@pytest.mark.parametrize(
    "edit, changed",
    [
        (("# a comment", "# another comment"), set()),
        (("    return [y for y in x]", "    return [\n        y for y in x\n    ]"), set()),  # breaks inside brackets
        (("    return SCALE * x", "    return SCALE + x"), {"double"}),
        (("SCALE = 2.0", "SCALE = 3.0"), {"<module>"}),
        (("    size: int = 3", "    size: int = 4"), {"Box"}),
        (("class Box:", "class Box(object):"), {"Box"}),
        (("@staticmethod", "@classmethod"), {"decorated"}),
        (("return lambda: self.size**2", "return lambda: self.size**3"), {"Box.area"}),
        (('"""A module."""', '"""A module, described."""'), {"<module>"}),
    ],
)
def test_a_unit_changes_exactly_when_its_tokens_do(edit, changed):
    before, after = _units(SOURCE)[0], _units(SOURCE.replace(*edit))[0]
    assert {u for u in before if before[u] != after.get(u)} == changed


def test_recording_hashes_the_code_as_it_ran_and_stale_names_what_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setattr(provenance, "_LOADED", {})
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    path = folder / "probe_module.py"
    path.write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "probe_module", raising=False)
    probe = importlib.import_module("probe_module")
    monkeypatch.setitem(sys.modules, "probe_module", probe)  # removed again after the test
    provenance._remember_loaded_sources()
    profiler = cProfile.Profile()
    profiler.enable()
    probe.double(1.0)
    probe.Box().area()
    profiler.disable()
    path.write_text(SOURCE.replace("SCALE * x", "SCALE - x"))  # edited while the benchmark was still running
    ran = provenance.sources(profiler)
    # `decorated` never ran; the module statements and class bodies of a file whose code ran are always recorded.
    assert ran.keys() == {"benchmarks/probe_module.py"}
    assert ran["benchmarks/probe_module.py"].keys() == {"<module>", "Box", "Box.area", "double"}
    block = {"sources": ran}
    assert provenance.stale(block) == ["benchmarks/probe_module.py::double"]  # recorded as it ran, not as edited
    path.write_text(SOURCE)
    assert provenance.stale(block) == []
    path.write_text(SOURCE.replace("def double", "def twice"))
    assert provenance.stale(block) == ["benchmarks/probe_module.py::double"]  # a unit that is gone is stale too
    path.unlink()
    assert len(provenance.stale(block)) == 4  # so is every unit of a file that is gone


def test_a_result_completed_by_two_runs_keeps_the_first_hash_and_unrecorded_stays_stale():
    first = {"a.py": {"f": "1", "g": "2"}}
    second = {"a.py": {"f": "9", "h": "3"}}
    assert provenance.merge(first, second) == {"a.py": {"f": "1", "g": "2", "h": "3"}}
    block = provenance.combined([{"sources": first}, None])
    assert block["sources"] == first
    assert provenance.stale(block)[0] == provenance.UNRECORDED["unrecorded"]


def _quoted_results() -> set[pathlib.Path]:
    """Every results file README.md and docs/*.md name (globs and brace lists expanded; a folder stands for the
    results under it). Not quotes: the bare `benchmarks/results/` (a pointer to all), scripts kept there (`run.sh`)
    and a command's `--out`."""
    quoted = set()
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for name in re.findall(r"(?<!--out )benchmarks/results/[\w./{},*-]*", page.read_text()):
            name = name.rstrip(".,")
            braces = re.search(r"\{([^}]*)\}", name)
            variants = [name.replace(braces.group(0), v) for v in braces.group(1).split(",")] if braces else [name]
            for variant in variants:
                matches = sorted(REPO.glob(variant)) if "*" in variant else [REPO / variant]
                assert matches and all(m.exists() for m in matches), f"{page.name} names {variant}, which is missing"
                quoted.update(m for m in matches if m != provenance.RESULTS and m.suffix not in (".sh", ".py"))
    return quoted


def _producing_json(path: pathlib.Path) -> list[pathlib.Path]:
    """The JSON files a quoted results path stands for: itself, the JSON beside a table or figure, or a folder's."""
    if path.is_dir():
        return provenance.results_files(path)
    if path.suffix == ".json":
        return [path]
    beside = path.with_suffix(".json")
    return [beside] if beside.exists() else provenance.results_files(path.parent)


def test_every_results_file_records_the_commit_that_produced_it():
    files = provenance.results_files()
    assert len(files) > 5
    unrecorded = [
        str(p.relative_to(REPO))
        for p in files
        if not re.fullmatch(r"[0-9a-f]{40}", json.loads(p.read_text()).get("provenance", {}).get("commit", ""))
    ]
    assert not unrecorded, f"results files without the commit that produced them: {unrecorded}"


def test_readme_and_docs_quote_only_results_regenerated_since_their_code_last_changed():
    quoted = sorted({json_path for q in _quoted_results() for json_path in _producing_json(q)})
    assert quoted, "README.md and docs/ quote no results file"
    problems = {p: provenance.stale(json.loads(p.read_text())["provenance"]) for p in quoted}
    report = "\n".join(
        f"{p.relative_to(REPO)}: {', '.join(s[:5])}" + (f" and {len(s) - 5} more" if len(s) > 5 else "")
        for p, s in problems.items()
        if s
    )
    assert not report, (
        "README.md or docs/ quote results older than their code; regenerate them with the command in each file's "
        f"provenance, or stop quoting them:\n{report}"
    )


def test_stamp_inside_a_recording_records_the_commit_and_keeps_recording():
    with provenance.recording():
        with provenance.paused():
            assert not provenance.is_recording()
        block = provenance.stamp()
        assert provenance.is_recording()
    assert not provenance.is_recording()
    assert re.fullmatch(r"[0-9a-f]{40}", block["commit"])
    assert block["command"] and "jax" in block["versions"] and isinstance(block["sources"], dict)
