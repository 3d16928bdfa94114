#!/usr/bin/env python
"""Write every chapter's first code cell (the Colab setup cell) in the book's one form.

    .venv/bin/python scripts/write_setup_cells.py           # rewrite the notebooks that differ
    .venv/bin/python scripts/write_setup_cells.py --check   # exit 1 naming those that would change

The cell installs this book's helpers from the repository (the URL set_repository.py manages), then
`helpers.colab.install_tested_keras` with the chapter's extras: Colab gets the Keras every output was
made with, under the installed TensorFlow's pins. `require` then checks that Keras (pyproject.toml's
tested-keras extra). Each chapter keeps its URL and its extras (read from the cell, old form or new);
nothing is re-executed: the setup cell stores no output.
"""
import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "ckpt-vs-savedmodel-helpers"
INSTALL = re.compile(r'"ckpt-vs-savedmodel-helpers(?:\[(?P<extras>[\w,-]*)\])? @ (?P<url>git\+https://\S+?)"')
INSTALLER_CALL = re.compile(r"install_tested_keras\((?P<args>[^)]*)\)")

TEMPLATE = '''\
import importlib.metadata
import sys

try:  # this book's helpers package, by its distribution name (Colab does not have it)
    importlib.metadata.version("{distribution}")
except importlib.metadata.PackageNotFoundError:  # no kernel restart needed: Keras is not imported yet
    !{{sys.executable}} -m pip install -q "{distribution} @ {url}"
    from helpers.colab import install_tested_keras
    install_tested_keras({arguments})  # {why}
from helpers.environment import require
require(keras="{keras}")  # every output on this page was made with Keras {keras}'''


def tested_keras(root=ROOT):
    """The version of pyproject.toml's tested-keras extra (`keras==X`)."""
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (line,) = extras["tested-keras"]
    return re.fullmatch(r"keras==(\S+)", line).group(1), set(extras)


def chapter_extras(source):
    """The extras a setup cell installs, in either form: `helpers[a,b] @ ...` or `install_tested_keras("a", "b")`."""
    call = INSTALLER_CALL.search(source)
    if call:
        return re.findall(r'"([\w-]+)"', call.group("args"))
    install = INSTALL.search(source)
    return [e for e in (install.group("extras") or "").split(",") if e] if install else []


def setup_cell(url, extras, keras):
    """The source of a chapter's setup cell."""
    why = f"Keras {keras}" + (" and this chapter's extras" if extras else "") + ", within TensorFlow's pins"
    return TEMPLATE.format(distribution=DISTRIBUTION, url=url, keras=keras, why=why,
                           arguments=", ".join(f'"{extra}"' for extra in extras))


def write_setup_cells(root=ROOT, check=False):
    """Rewrite each notebook's first code cell in the one form; return the notebooks that (would) change."""
    keras, declared = tested_keras(root)
    changed = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        install = INSTALL.search(cell.source)
        if not install:
            raise ValueError(f"{path}: its first code cell does not install {DISTRIBUTION} from a git URL")
        extras = chapter_extras(cell.source)
        unknown = [e for e in extras if e not in declared]
        if unknown:
            raise ValueError(f"{path}: extras {unknown} are not in pyproject.toml")
        source = setup_cell(install.group("url"), extras, keras)
        if source != cell.source:
            changed.append(path)
            if not check:
                cell.source = source
                path.write_text(nbformat.writes(nb) + "\n")
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a cell differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's folder (default: this checkout)")
    args = parser.parse_args()
    changed = write_setup_cells(args.root, check=args.check)
    for path in changed:
        print(f"{'differs' if args.check else 'updated'}: {path.relative_to(args.root)}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
