"""mkdocs hook: publish the benchmark figures (benchmarks/results/**/*.png) under `figures/`, without copying them.

`benchmarks/results/experiments/track_A.png` is then `figures/experiments/track_A.png` from a page in `docs/`.
"""

import pathlib

from mkdocs.structure.files import File

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files, config):
    for path in sorted(RESULTS.rglob("*.png")):
        uri = f"figures/{path.relative_to(RESULTS).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
