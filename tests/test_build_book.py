"""scripts/build_book.py: the digest that lets the tests reuse README's build must follow the sources."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_book  # noqa: E402


@pytest.fixture
def book(tmp_path):
    """A tiny tree with one file of each kind the builds read, and things they do not."""
    for name, text in {"_config.yml": "title: t\n", "_toc.yml": "root: intro\n", "intro.md": "# Hi\n",
                       "notebooks/01.ipynb": "{}\n", "locales/zh_CN/LC_MESSAGES/intro.po": 'msgid ""\n',
                       "_ext/editions.py": "X = 1\n", "scripts/translation.py": "# t\n",
                       "helpers/toy.py": "# not read by the build\n", "tests/test_x.py": "# nor this\n",
                       "notebooks/.ipynb_checkpoints/01-checkpoint.ipynb": "{}\n",
                       "_ext/__pycache__/editions.cpython-311.pyc": "x"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("changed", ["notebooks/01.ipynb", "locales/zh_CN/LC_MESSAGES/intro.po",
                                     "_ext/editions.py", "intro.md", "scripts/translation.py",
                                     "notebooks/02_new.ipynb"])
def test_any_change_to_what_the_build_reads_changes_the_digest(book, changed):
    before = build_book.sources_digest(book)
    with open(book / changed, "a") as f:
        f.write(" ")
    assert build_book.sources_digest(book) != before


@pytest.mark.parametrize("changed", ["helpers/toy.py", "tests/test_x.py",
                                     "notebooks/.ipynb_checkpoints/01-checkpoint.ipynb",
                                     "_ext/__pycache__/editions.cpython-311.pyc"])
def test_what_the_build_does_not_read_leaves_the_digest_alone(book, changed):
    before = build_book.sources_digest(book)
    with open(book / changed, "a") as f:
        f.write(" ")
    assert build_book.sources_digest(book) == before


def test_a_build_is_reused_only_while_its_sources_are_unchanged(book):
    assert build_book.current_build(book) is None  # never built
    (book / "_build").mkdir()
    (book / build_book.STAMP).write_text(build_book.sources_digest(book) + "\n")
    assert build_book.current_build(book) == book / "_build"
    (book / "notebooks" / "01.ipynb").write_text('{"cells": []}\n')
    assert build_book.current_build(book) is None


@pytest.mark.parametrize("failing_step", [0, 1, 2])
def test_a_failed_step_leaves_no_stamp_even_where_an_old_build_had_one(book, monkeypatch, failing_step):
    (book / "_build").mkdir()
    (book / build_book.STAMP).write_text(build_book.sources_digest(book) + "\n")
    steps = []
    monkeypatch.setattr(build_book, "run", lambda command: steps.append(command) or (
        1 if len(steps) - 1 == failing_step else 0))
    assert build_book.main(book) == 1
    assert len(steps) == failing_step + 1
    assert build_book.current_build(book) is None


def test_three_successful_steps_write_the_stamp_of_the_sources_they_started_from(book, monkeypatch):
    digest = build_book.sources_digest(book)
    steps = []

    def build_and_edit(command):
        steps.append(command)
        (book / "_build").mkdir(exist_ok=True)
        if len(steps) == 2:  # a reader saves a notebook while the book builds
            (book / "notebooks" / "01.ipynb").write_text('{"edited": 1}\n')
        return 0

    monkeypatch.setattr(build_book, "run", build_and_edit)
    assert build_book.main(book) == 0 and len(steps) == 3
    assert (book / build_book.STAMP).read_text().strip() == digest
    assert build_book.current_build(book) is None  # the edit made during the build is not covered
