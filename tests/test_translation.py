"""The Chinese edition (issue 22): its catalogs follow the English sources, every translation keeps
the code, links and glued numbers of its English, the term list is used, and a changed English
sentence turns its translation fuzzy and shows English on the Chinese page.

scripts/translation.py makes the catalogs (`update`) and the Chinese HTML (`build`).
"""
import collections
import html
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import translation  # noqa: E402

LANGUAGE = "zh_CN"
CATALOGS = translation.catalogs(LANGUAGE)
PENDING_FILE = ROOT / "locales" / LANGUAGE / "pending.txt"
PENDING = [line.strip() for line in PENDING_FILE.read_text().splitlines()
           if line.strip() and not line.startswith("#")] if PENDING_FILE.exists() else []
ALL_REQUIRED = os.environ.get("TRANSLATIONS_COMPLETE") == "1"
TERMS = yaml.safe_load((ROOT / "locales" / LANGUAGE / "terms.yml").read_text())

CODE = re.compile(r"(`+)(.+?)\1")
GLUE = re.compile(r"\{glue:text\}`([^`]+)`")
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")
ROLE = re.compile(r"\{[a-z:-]+\}`[^`]*`")


def translated_messages():
    """(page, message) for every message that has a translation in use (not fuzzy)."""
    for page, path in CATALOGS.items():
        for message in translation.read_catalog(path):
            if message.id and message.string and not message.fuzzy:
                yield page, message


def test_every_page_has_a_catalog():
    pages = {p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.glob("*.md")} | \
            {p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")}
    pages -= {"README"}
    assert set(CATALOGS) == pages


def test_catalogs_are_up_to_date_with_the_english_sources(tmp_path):
    """Regenerating the catalogs from today's sources changes no file."""
    locales = tmp_path / "locales"
    shutil.copytree(ROOT / "locales", locales)
    changed = translation.update(locales=locales, quiet=True)
    assert not changed, (f"catalogs out of date with the English sources: {changed}. Run "
                         "`.venv/bin/python scripts/translation.py update`, translate what it marks, "
                         "commit locales/")


@pytest.mark.parametrize("page", sorted(CATALOGS))
def test_catalog_is_fully_translated(page):
    untranslated, fuzzy = translation.problems(CATALOGS[page])
    if page in PENDING and not ALL_REQUIRED:
        pytest.skip(f"translation pending (locales/{LANGUAGE}/pending.txt): "
                    f"{len(untranslated)} untranslated, {len(fuzzy)} fuzzy")
    shown = [f"untranslated: {m[:90]!r}" for m in untranslated[:8]] + [f"fuzzy: {m[:90]!r}" for m in fuzzy[:8]]
    assert not untranslated and not fuzzy, (
        f"locales/{LANGUAGE}/LC_MESSAGES/{page}.po has {len(untranslated)} untranslated and "
        f"{len(fuzzy)} fuzzy messages (the Chinese page shows their English):\n  " + "\n  ".join(shown))


def test_pending_list_names_only_unfinished_catalogs():
    unknown = [p for p in PENDING if p not in CATALOGS]
    finished = [p for p in PENDING if p in CATALOGS and translation.problems(CATALOGS[p]) == ([], [])]
    assert not unknown, f"pending.txt names no catalog: {unknown}"
    assert not finished, f"fully translated, remove from locales/{LANGUAGE}/pending.txt: {finished}"


def markup(text):
    """What a translation must keep from its English: glued numbers, inline code, link targets."""
    glue = sorted(GLUE.findall(text))
    code = sorted(m.group(2).strip() for m in CODE.finditer(ROLE.sub("", text)))
    links = sorted(LINK_TARGET.findall(text))
    return {"glued numbers": glue, "code": code, "link targets": links}


def test_translations_keep_code_links_and_glued_numbers():
    """A glued number in the Chinese text is the same key and format as in the English; code stays English."""
    problems = []
    for page, message in translated_messages():
        english, chinese = markup(message.id), markup(message.string)
        for kind in english:
            if english[kind] != chinese[kind]:
                missing = collections.Counter(english[kind]) - collections.Counter(chinese[kind])
                extra = collections.Counter(chinese[kind]) - collections.Counter(english[kind])
                problems.append(f"{page}: {message.id[:50]!r}: {kind} missing {sorted(missing)}, "
                                f"added {sorted(extra)}")
    assert not problems, "\n".join(problems[:20])


def words(text):
    """The text a reader reads as words: no inline code, no link targets, no roles."""
    return LINK_TARGET.sub("]", CODE.sub(" ", ROLE.sub(" ", text)))


def test_translations_use_the_term_list():
    problems = []
    for page, message in translated_messages():
        english, chinese = words(message.id), words(message.string)
        for term in TERMS:
            forms = "|".join(re.escape(f) for f in sorted(term["en"], key=len, reverse=True))
            if re.search(rf"(?<![\w-])(?:{forms})(?![\w-])", english, flags=re.I) and term["zh"] not in chinese:
                problems.append(f"{page}: {message.id[:60]!r} has {term['en'][0]!r} but not {term['zh']}")
    assert not problems, "\n".join(problems[:20])


def test_a_numbered_title_is_translated_not_dropped(built_book):
    """Sphinx uses a translation only if it parses as one paragraph, and "1. 用 Keras 保存权重" would
    parse as a list: _ext/editions.py escapes it (and fails the build for anything else)."""
    title = next(m.string for m in translation.read_catalog(CATALOGS["notebooks/01_keras_weights"])
                 if m.id == "1. Saving weights with Keras")
    assert title.startswith("1. ")
    page = (built_book / LANGUAGE / "notebooks" / "01_keras_weights.html").read_text()
    assert re.search(r"<h1>" + re.escape(title) + "<a", page)


def test_the_chinese_navigation_shows_translated_part_captions(built_book):
    """The parts' captions come from intro.po (sphinx-external-toc adds them after Sphinx translates)."""
    captions = {m.id: m.string for m in translation.read_catalog(CATALOGS["intro"])
                if m.id in ("Training checkpoints", "Appendices")}
    page = (built_book / LANGUAGE / "notebooks" / "01_keras_weights.html").read_text()
    shown = re.findall(r'<p aria-level="2" class="caption" role="heading"><span class="caption-text">([^<]*)<', page)
    assert captions["Training checkpoints"] in shown and captions["Appendices"] in shown, shown


def test_glued_numbers_are_the_same_in_both_editions(built_book):
    """Every page pastes the same numbers, in the same order, in English and in Chinese."""
    pasted = re.compile(r'<span class="pasted-text">([^<]*)</span>')
    compared = 0
    for english in built_book.rglob("*.html"):
        relative = english.relative_to(built_book)
        if relative.parts[0] in (LANGUAGE, "_static", "_sources"):
            continue
        chinese = built_book / LANGUAGE / relative
        assert chinese.exists(), f"no Chinese page for {relative}"
        numbers = pasted.findall(english.read_text())
        assert pasted.findall(chinese.read_text()) == numbers, relative
        compared += len(numbers)
    assert compared > 100


def mini_book(tmp_path):
    """A one-page book (the glossary) with the real configuration, extension and catalog."""
    book = tmp_path / "book"
    book.mkdir()
    for name in ("_config.yml", "glossary.md"):
        shutil.copy(ROOT / name, book / name)
    for name in ("_ext", "_static"):
        shutil.copytree(ROOT / name, book / name)
    (book / "_toc.yml").write_text("format: jb-book\nroot: glossary\n")
    folder = book / "locales" / LANGUAGE / "LC_MESSAGES"
    folder.mkdir(parents=True)
    shutil.copy(CATALOGS["glossary"], folder / "glossary.po")
    return book


def test_a_changed_english_sentence_turns_fuzzy_and_the_chinese_page_shows_it_in_english(tmp_path):
    book = mini_book(tmp_path)
    old = "The path a checkpoint's files share"
    new = "The path shared by all the files of one checkpoint"
    chinese_before = next(m.string for m in translation.read_catalog(CATALOGS["glossary"]) if m.id.startswith(old))
    assert chinese_before
    source = (book / "glossary.md").read_text()
    assert source.count(old) == 1
    (book / "glossary.md").write_text(source.replace(old, new))

    changed = translation.update(source=book, locales=book / "locales", quiet=True)
    assert changed == [f"{LANGUAGE}/LC_MESSAGES/glossary.po"]
    untranslated, fuzzy = translation.problems(book / "locales" / LANGUAGE / "LC_MESSAGES" / "glossary.po")
    assert [m[:len(new)] for m in fuzzy] == [new] and untranslated == []  # caught by the 100 % test

    result = translation.build(LANGUAGE, source=book, output=tmp_path / "zh", work=tmp_path / "work")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    page = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "zh" / "glossary.html").read_text()))
    assert new in page and chinese_before[:12] not in page  # the fuzzy translation is not shown
    assert "检查点（Checkpoint）" in page  # the others still are


def test_a_translated_admonition_title_builds_without_warning_and_shows(tmp_path):
    """Sphinx parses a title outside a section (an admonition's) as a one-title section; the
    extension's one-paragraph check must accept it, and the Chinese title must show."""
    book = mini_book(tmp_path)
    with open(book / "glossary.md", "a") as f:
        f.write("\n```{admonition} Which Keras?\n:class: note\nA note.\n```\n")
    with open(book / "locales" / LANGUAGE / "LC_MESSAGES" / "glossary.po", "a") as f:
        f.write('\nmsgid "Which Keras?"\nmsgstr "用的是哪个 Keras？"\n')
    result = translation.build(LANGUAGE, source=book, output=tmp_path / "zh", work=tmp_path / "work")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "用的是哪个 Keras？" in (tmp_path / "zh" / "glossary.html").read_text()
