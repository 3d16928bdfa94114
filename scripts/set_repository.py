#!/usr/bin/env python
"""Point the book at another GitHub repository (a fork, a course's copy), in every place at once.

    .venv/bin/python scripts/set_repository.py OWNER/REPO [--branch BRANCH]

It rewrites `repository.url` (and `branch`) in _config.yml, which the repository and Colab buttons
follow, and the install URL in each notebook's first code cell, which Colab runs. Nothing is
re-executed: the setup cells' outputs do not show the URL. tests/test_book.py checks that
_config.yml and the setup cells agree.
"""
import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
INSTALL_URL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'@#])")
URL_LINE = re.compile(r"^([ \t]*url:[ \t]*)\S+[ \t]*$", re.M)
BRANCH_LINE = re.compile(r"^([ \t]*branch:[ \t]*)\S+[ \t]*$", re.M)


def set_repository(slug, branch=None, root=ROOT):
    """Rewrite the repository URL in _config.yml and every notebook's setup cell; return the files changed."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", slug):
        raise ValueError(f"expected OWNER/REPO, got {slug!r}")
    url = f"https://github.com/{slug}"
    config = root / "_config.yml"
    text = config.read_text()
    repository_block = re.search(r"^repository:\n((?:[ \t]+.*\n)+)", text, re.M)
    if not repository_block:
        raise ValueError(f"{config}: no 'repository:' section")
    block = URL_LINE.sub(lambda m: m.group(1) + url, repository_block.group(1), count=1)
    if branch:
        block = BRANCH_LINE.sub(lambda m: m.group(1) + branch, block, count=1)
    changed = []
    new_text = text[:repository_block.start(1)] + block + text[repository_block.end(1):]
    if new_text != text:
        config.write_text(new_text)
        changed.append(config)
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        setup = next(cell for cell in nb.cells if cell.cell_type == "code")
        if not INSTALL_URL.search(setup.source):
            raise ValueError(f"{path}: its first code cell installs from no GitHub URL")
        source = INSTALL_URL.sub(f"git+{url}", setup.source)
        if source != setup.source:
            setup.source = source
            path.write_text(nbformat.writes(nb) + "\n")
            changed.append(path)
    return changed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug", metavar="OWNER/REPO")
    parser.add_argument("--branch")
    args = parser.parse_args()
    for path in set_repository(args.slug, args.branch):
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
