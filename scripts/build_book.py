#!/usr/bin/env python
"""Build every edition of the book from scratch and record which sources it was built from.

    .venv/bin/python scripts/build_book.py

It runs, warnings as errors (`-W -n --keep-going`), on an emptied `_build/`:
1. `jupyter-book build .` — the English book into `_build/html/`;
2. `scripts/translation.py build` — the Chinese edition into `_build/html/zh_CN/`;
3. `scripts/build_student_edition.py` — the student edition (both languages) into `_build/student/`;
and only when all three succeed it writes `_build/book.sha256`: a digest of every file the builds
read. The tests check this build instead of building the book again when the digest still matches the
sources (tests/conftest.py); after any change to a page, a notebook, a catalog or a build script they
build their own copy. From scratch, because Sphinx re-reads only changed pages on a rebuild and so
would not repeat an unchanged page's warnings.
"""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from build_student_edition import SOURCES as BOOK_SOURCES

ROOT = Path(__file__).resolve().parent.parent
# Everything the three builds read: the book's sources (the ones build_student_edition.py copies),
# the scripts that build it, and the pinned toolchain.
SOURCES = [*BOOK_SOURCES, "requirements.txt", "scripts/build_book.py", "scripts/translation.py",
           "scripts/build_student_edition.py"]
STAMP = Path("_build") / "book.sha256"


def sources_digest(root=ROOT):
    """SHA-256 over the path and bytes of every source file of the book under `root`, in name order
    (caches and hidden files excluded): any edit to what the builds read changes it."""
    digest = hashlib.sha256()
    files = set()
    for pattern in SOURCES:
        for path in root.glob(pattern):
            files.update([path] if path.is_file() else (p for p in path.rglob("*") if p.is_file()))
    for path in sorted(files):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in relative.split("/")):
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def current_build(root=ROOT):
    """`root/_build` when the last complete build there was made from the sources as they are now,
    else None (no build, a failed or unfinished one, or sources changed since)."""
    stamp = root / STAMP
    if stamp.is_file() and stamp.read_text().strip() == sources_digest(root):
        return root / "_build"
    return None


def run(command):
    print("+", " ".join(map(str, command)), flush=True)
    return subprocess.run([str(part) for part in command]).returncode


def main(root=ROOT):
    digest = sources_digest(root)  # before building: an edit made during the build must not pass
    shutil.rmtree(root / "_build", ignore_errors=True)
    python = Path(sys.executable)
    steps = [[python.with_name("jupyter-book"), "build", root, "-W", "-n", "--keep-going"],
             [python, root / "scripts" / "translation.py", "build"],
             [python, root / "scripts" / "build_student_edition.py", root / "_build" / "student"]]
    for command in steps:
        returncode = run(command)
        if returncode:
            return returncode
    (root / STAMP).write_text(digest + "\n")
    print(f"built from sources {digest[:12]}: {STAMP}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
