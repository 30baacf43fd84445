"""Which code produced a results file, and whether that code has changed since.

A benchmark runs under `recording()` (the standard library's C profiler, which costs about 5-15 % of the CPU time of
tracing-heavy code), and `stamp()` returns the block its results JSON carries under `"provenance"`: the commit, the
repository files that differed from it, the command, the versions, and a hash of every *unit* of the repository's code
that ran. A unit is a top-level function or a method (with everything nested in it), or the other statements of a
class body or of a module (constants, fields, decorators). Hashes are of the unit's tokens without comments or line
breaks inside brackets, so reformatting a comment does not make a result stale, and any other edit does.

`stale(block)` recomputes the hashes on the current tree and names the units that changed or disappeared. The test
run (`tests/test_provenance.py`) requires every committed results file to record its commit, and every one that
README.md or docs/ quote to have no stale unit. Timing benchmarks pause the profiler while they time (`paused()`)
and record the code in one extra, untimed call.

Run as a script to list the stale results files: `python3 benchmarks/provenance.py`.
"""

import ast
import contextlib
import cProfile
import datetime
import functools
import hashlib
import importlib.metadata
import io
import json
import pathlib
import platform
import subprocess
import sys
import textwrap
import tokenize

REPO = pathlib.Path(__file__).resolve().parents[1]  # this module's own code is not recorded: it changes no number
RESULTS = REPO / "benchmarks" / "results"
PRODUCING = ("jaxlump", "benchmarks", "tests")  # the folders whose code can produce a result (tests: the user-written
# models of `tests/_models.py`, which `benchmarks/real_models.py` trains)
MODULE = "<module>"
_PROFILER = cProfile.Profile()
_DEPENDENCIES = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optax", "flax", "numpy", "scipy")


def _normalised_tokens(text: str) -> bytes:
    """The token strings of `text` without comments and non-logical line breaks (indentation kept as its level)."""
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    levels = (tokenize.INDENT, tokenize.DEDENT)
    try:
        kept = [
            tokenize.tok_name[t.type] if t.type in levels else t.string
            for t in tokenize.generate_tokens(io.StringIO(textwrap.dedent(text)).readline)
            if t.type not in skipped
        ]
    except (tokenize.TokenError, IndentationError):  # a segment that does not tokenise alone: compare its text
        return text.encode()
    return "\x1f".join(kept).encode()


def _start(node: ast.AST) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _segment(lines: list[str], node: ast.AST) -> str:
    return "".join(lines[_start(node) - 1 : node.end_lineno])


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@functools.cache
def _units(source: str) -> tuple[dict[str, bytes], list[tuple[int, int, str]], tuple[str, ...]]:
    """`(tokens by unit name, [(first line, last line, unit name)], class units)` of one Python file's source.

    Units: `f` and `C.m` (functions and methods, nested classes as `C.D.m`), `C` (a class body's other statements
    with its header), `<module>` (the module's other statements).
    """
    lines = source.splitlines(keepends=True)
    tokens: dict[str, bytes] = {}
    spans: list[tuple[int, int, str]] = []
    classes: list[str] = []

    def rest(body, header: str = "") -> bytes:
        parts = [header] + [_segment(lines, s) for s in body if not isinstance(s, _DEFINITIONS)]
        return b"\x1e".join(_normalised_tokens(p) for p in parts if p)

    def visit(body, prefix: str) -> None:
        for statement in body:
            if not isinstance(statement, _DEFINITIONS):
                continue
            name = prefix + statement.name
            spans.append((_start(statement), statement.end_lineno, name))
            if isinstance(statement, ast.ClassDef):
                header = "".join(lines[_start(statement) - 1 : max(statement.body[0].lineno - 1, statement.lineno)])
                tokens[name] = rest(statement.body, header if statement.body[0].lineno > statement.lineno else "")
                classes.append(name)
                visit(statement.body, name + ".")
            else:
                tokens[name] = _normalised_tokens(_segment(lines, statement))

    tree = ast.parse(source)
    tokens[MODULE] = rest(tree.body)
    visit(tree.body, "")
    return tokens, spans, tuple(classes)


def _unit_of(source: str, first_line: int) -> str:
    """The unit whose code object starts at `first_line`: the innermost function, class body or the module."""
    inner = MODULE
    for start, end, name in _units(source)[1]:
        if start <= first_line <= end and (inner == MODULE or name.startswith(inner + ".")):
            inner = name
    return inner


def _digest(tokens: bytes) -> str:
    return hashlib.sha256(tokens).hexdigest()[:16]


def _relative(filename: str) -> str | None:
    try:
        path = pathlib.Path(filename).resolve().relative_to(REPO)
    except ValueError:
        return None
    producing = path.parts[0] in PRODUCING and path.suffix == ".py" and path.name != pathlib.Path(__file__).name
    return path.as_posix() if producing else None


def unit_hash(relative_path: str, unit: str, *, as_run: bool = False) -> str | None:
    """The hash of one unit in the file now, or (`as_run`) as it was when `recording()` began; `None` if the file or
    the unit does not exist."""
    path = REPO / relative_path
    source = _LOADED.get(path) if as_run else None
    if source is None:
        if not path.is_file():
            return None
        source = path.read_text()
    tokens = _units(source)[0].get(unit)
    return None if tokens is None else _digest(tokens)


_LOADED: dict[pathlib.Path, str] = {}  # the source of each repository module as imported, read when recording began


def _remember_loaded_sources() -> None:
    """Keep the source of every imported repository module, so that an edit while a long benchmark runs is not
    mistaken for the code that ran (modules imported later are read when the result is stamped)."""
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if filename and _relative(filename):
            path = pathlib.Path(filename).resolve()
            _LOADED.setdefault(path, path.read_text())


def sources(profiler: cProfile.Profile = _PROFILER) -> dict[str, dict[str, str]]:
    """`{file: {unit: hash}}` of every unit of the repository's producing code that `profiler` saw run, with the
    module-level statements and class bodies of each file one ran in."""
    profiler.create_stats()
    ran: dict[str, set[str]] = {}
    for filename, first_line, _name in profiler.stats:
        relative = _relative(filename)
        if relative is not None:
            ran.setdefault(relative, set()).add(_unit_of(_as_run(relative), first_line))
    for relative, units in ran.items():  # module constants and class fields act without a call of their own
        units.update((MODULE, *_units(_as_run(relative))[2]))
    return {f: {u: unit_hash(f, u, as_run=True) for u in sorted(ran[f])} for f in sorted(ran)}


def _as_run(relative: str) -> str:
    path = REPO / relative
    return _LOADED.get(path) or path.read_text()


def merge(recorded: dict[str, dict[str, str]], new: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The sources of a result completed in two runs: a unit keeps its first hash, so a change between them is stale."""
    merged = {f: dict(units) for f, units in new.items()}
    for f, units in recorded.items():
        merged.setdefault(f, {}).update(units)
    return {f: dict(sorted(merged[f].items())) for f in sorted(merged)}


def combined(blocks: list[dict | None]) -> dict:
    """One recorded block for a result derived from several (a table of many raw files): their sources merged,
    `UNRECORDED` if any has none."""
    merged: dict[str, dict[str, str]] = {}
    for block in blocks:
        merged = merge(merged, (block or {}).get("sources", {}))
    unrecorded = any(block is None or "unrecorded" in block for block in blocks)
    return {"sources": merged} | (UNRECORDED if unrecorded else {})


@contextlib.contextmanager
def recording():
    """Profile the code that runs inside (every call, C-level; nesting is allowed and records once)."""
    already = _PROFILER_ACTIVE[0]
    if not already:
        _remember_loaded_sources()
        _PROFILER.enable()
        _PROFILER_ACTIVE[0] = True
    try:
        yield
    finally:
        if not already:
            _PROFILER.disable()
            _PROFILER_ACTIVE[0] = False


_PROFILER_ACTIVE = [False]


def is_recording() -> bool:
    return _PROFILER_ACTIVE[0]


@contextlib.contextmanager
def paused():
    """Stop profiling inside (for timed sections), resuming after if it was on."""
    active = _PROFILER_ACTIVE[0]
    if active:
        _PROFILER.disable()
        _PROFILER_ACTIVE[0] = False
    try:
        yield
    finally:
        if active:
            _PROFILER.enable()
            _PROFILER_ACTIVE[0] = True


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.rstrip("\n")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


UNRECORDED = {"unrecorded": "part of this result was computed before its code was recorded"}


def stamp(recorded: dict | None = None) -> dict:
    """The provenance block of the results written now: merged with `recorded`'s sources when completing a result
    that an earlier run began (`UNRECORDED` if that run recorded none: the result then stays stale)."""
    with paused():
        ran = sources()
    if recorded is not None:
        ran = merge(recorded.get("sources", {}), ran)
    changed = _git("status", "--porcelain", "--", *PRODUCING).splitlines()
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted": sorted(line[3:] for line in changed),
        "command": [pathlib.Path(sys.argv[0]).name, *sys.argv[1:]],
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in _DEPENDENCIES},
        "profiled": "cProfile (wall times of untimed benchmarks include its overhead)",
        "sources": ran,
    } | ({} if recorded is None or "unrecorded" not in recorded else {"unrecorded": recorded["unrecorded"]})


def stale(block: dict) -> list[str]:
    """`file::unit` of every recorded unit whose code changed or is gone (and why a result without them is stale)."""
    if "sources" not in block:
        return ["the code that ran was not recorded"]
    own = f"benchmarks/{pathlib.Path(__file__).name}"  # recorded by results that predate its exclusion
    changed = [
        f"{f}::{u}"
        for f, units in block["sources"].items()
        if f != own
        for u, digest in units.items()
        if unit_hash(f, u) != digest
    ]
    return ([block["unrecorded"]] if "unrecorded" in block else []) + changed


def results_files(root: pathlib.Path = RESULTS) -> list[pathlib.Path]:
    """Every JSON results file under `root`: the experiments' raw files included, their run logs (`runs.json`: when,
    not what) and the `--quick` smoke runs' files excluded."""
    return sorted(
        p for p in root.rglob("*.json") if "quick" not in p.name and "quick" not in p.parent.name and p.stem != "runs"
    )


def main() -> int:
    bad = 0
    for path in results_files():
        block = json.loads(path.read_text()).get("provenance")
        problem = "no provenance" if block is None else ", ".join(stale(block)[:6])
        if problem:
            bad += 1
            print(f"{path.relative_to(REPO)}: {problem}")
    print(f"{bad} stale or unrecorded results file(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
