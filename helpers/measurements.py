"""The book's committed measurements (benchmarks/*.json), wherever the helpers package was installed from.

The benchmark scripts write benchmarks/NAME.json in the repository; pyproject.toml ships that folder
inside the package as `helpers/benchmarks/`, so a reader who pip-installed the helpers (Colab) reads
the same numbers as the book, with no repository and no network.
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name):
    """The measurements in benchmarks/NAME.json ('serving', 'formats', 'production') as a dict."""
    for folder in (HERE / "benchmarks", HERE.parent / "benchmarks"):  # installed package, then this checkout
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    available = sorted({p.stem for folder in (HERE / "benchmarks", HERE.parent / "benchmarks")
                        if folder.is_dir() for p in folder.glob("*.json")})
    raise FileNotFoundError(f"no measurements named {name!r} (benchmarks/{name}.json); "
                            f"there are: {', '.join(available) or 'none'}")
