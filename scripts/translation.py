#!/usr/bin/env python
"""The book's translations: gettext catalogs made from the English sources, and the translated HTML.

    .venv/bin/python scripts/translation.py update     # catalogs follow the English sources
    .venv/bin/python scripts/translation.py status     # per catalog: translated, fuzzy, untranslated
    .venv/bin/python scripts/translation.py build      # the Chinese HTML into _build/html/zh_CN/

The English notebooks and pages are the only source. `update` extracts every message of the book
(Sphinx's gettext builder) and merges it into locales/<language>/LC_MESSAGES/<page>.po with
sphinx-intl: a new message arrives untranslated, a changed one keeps its old translation marked
fuzzy (with the old English as `#| msgid`), and Sphinx shows the English text for both until a
translator has dealt with them. `build` builds the same notebooks with `language: zh_CN` into
_build/html/zh_CN/, beside the English book in _build/html/, so each page's language switch is a
relative link that works offline. Run `jupyter-book build .` first (README's setup-and-build does).
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LOCALES = ROOT / "locales"
LANGUAGES = ["zh_CN"]
# Appended to the book's title in the student edition (scripts/build_student_edition.py).
STUDENT_EDITION = {"en": " (student edition)", "zh_CN": "（学生版）"}


def jupyter_book(*args):
    return subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), *map(str, args)],
                          capture_output=True, text=True)


def read_catalog(path):
    from babel.messages.pofile import read_po
    with open(path, "rb") as f:
        return read_po(f, charset="utf-8")


def catalogs(language="zh_CN", locales=LOCALES):
    """{page name: .po path} for one language, e.g. {'notebooks/01_keras_weights': ...}."""
    folder = locales / language / "LC_MESSAGES"
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*.po"))}


def extract(pot_dir, source=ROOT):
    """Every translatable message of the book at `source`, one .pot per page, into `pot_dir`."""
    with tempfile.TemporaryDirectory() as out:
        result = jupyter_book("build", source, "--builder", "custom", "--custom-builder", "gettext",
                              "--path-output", out, "-q")
        if result.returncode:
            raise RuntimeError("gettext build failed:\n" + result.stdout[-3000:] + result.stderr[-3000:])
        shutil.rmtree(pot_dir, ignore_errors=True)
        shutil.copytree(Path(out) / "_build" / "gettext", pot_dir, ignore=shutil.ignore_patterns("_static"))
    return pot_dir


def update(source=ROOT, locales=LOCALES, languages=LANGUAGES, quiet=False):
    """Merge the messages of the English sources into the catalogs; returns the files it changed.

    sphinx-intl's merge: a catalog is rewritten only when its set of messages changed, so an update
    of up-to-date catalogs changes no file. Unlike `sphinx-intl update`, a message turned fuzzy
    keeps the English it was translated from (`#| msgid`), so a translator sees what changed. The
    catalog of a page that no longer exists is removed.
    """
    from sphinx_intl.catalog import dump_po, load_po, update_with_fuzzy
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        pot_dir = extract(Path(tmp) / "pot", source)
        templates = {p.relative_to(pot_dir).with_suffix("").as_posix(): p for p in sorted(pot_dir.rglob("*.pot"))}
        for language in languages:
            existing = catalogs(language, locales)
            for page, template in templates.items():
                path = locales / language / "LC_MESSAGES" / f"{page}.po"
                pot = load_po(str(template))
                if page in existing:
                    catalog = load_po(str(path))
                    before = {m.id for m in catalog if m.id}
                    update_with_fuzzy(catalog, pot)
                    if {m.id for m in catalog if m.id} == before:
                        continue
                else:
                    catalog = pot
                    catalog.locale = language
                dump_po(str(path), catalog, width=76, include_previous=True)
                changed.append(path)
            for page, path in existing.items():
                if page not in templates:
                    path.unlink()
                    changed.append(path)
    changed = [p.relative_to(locales).as_posix() for p in changed]
    if not quiet:
        print("\n".join(f"changed: {p}" for p in changed) or "catalogs already up to date")
    return changed


def problems(path):
    """(untranslated, fuzzy) messages of one catalog, as lists of their English text."""
    untranslated, fuzzy = [], []
    for message in read_catalog(path):
        if not message.id:
            continue
        if message.fuzzy:
            fuzzy.append(message.id)
        elif not message.string:
            untranslated.append(message.id)
    return untranslated, fuzzy


def status(language="zh_CN", locales=LOCALES):
    rows = []
    for page, path in catalogs(language, locales).items():
        total = sum(1 for m in read_catalog(path) if m.id)
        untranslated, fuzzy = problems(path)
        rows.append((page, total - len(untranslated) - len(fuzzy), len(fuzzy), len(untranslated), total))
    return rows


def translated_title(language, source=ROOT, locales=LOCALES):
    """The book's title in `language`: the translation of the intro's heading, which is the title."""
    title = yaml.safe_load((source / "_config.yml").read_text())["title"].removesuffix(STUDENT_EDITION["en"])
    intro = locales / language / "LC_MESSAGES" / "intro.po"
    if intro.exists():
        message = read_catalog(intro).get(title)
        if message is not None and message.string and not message.fuzzy:
            return message.string
    return title


def build(language="zh_CN", source=ROOT, output=None, work=None, student=False, locales=None):
    """Build the edition in `language` from the notebooks and pages at `source` into `output`
    (default: _build/html/<language>/, beside the English book), with Sphinx's own files in `work`
    (default: _build/<language>/, kept for a faster rebuild). Returns the finished process."""
    locales = locales or source / "locales"
    output = Path(output or source / "_build" / "html" / language).resolve()
    work = Path(work or source / "_build" / language).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Sphinx compiles each .po into a .mo next to it: compile a copy, never the repository's files.
    shutil.copytree(locales, work / "locales", dirs_exist_ok=True)
    config = yaml.safe_load((source / "_config.yml").read_text())
    config["title"] = translated_title(language, source, locales) + (STUDENT_EDITION[language] if student else "")
    sphinx = config.setdefault("sphinx", {})
    sphinx["local_extensions"] = {name: str((source / path).resolve()) + "/"
                                  for name, path in sphinx.get("local_extensions", {}).items()}
    sphinx.setdefault("config", {}).update(language=language, locale_dirs=[str(work / "locales")])
    (work / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    result = jupyter_book("build", source, "--config", work / "_config.yml", "--path-output", work,
                          "-W", "-n", "--keep-going", "-q")
    if result.returncode == 0:
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(work / "_build" / "html", output)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("update", help="merge the English sources' messages into the catalogs")
    sub.add_parser("status", help="per catalog: translated, fuzzy and untranslated messages")
    build_parser = sub.add_parser("build", help="build the translated HTML beside the English book")
    build_parser.add_argument("--language", default="zh_CN", choices=LANGUAGES)
    build_parser.add_argument("--output", type=Path, help="default: _build/html/<language>/")
    args = parser.parse_args()
    if args.command == "update":
        update()
    elif args.command == "status":
        for language in LANGUAGES:
            rows = status(language)
            print(f"{'catalog (' + language + ')':48} {'done':>6} {'fuzzy':>6} {'to do':>6} {'total':>6}")
            for page, done, fuzzy, todo, total in rows:
                print(f"{page:48} {done:6} {fuzzy:6} {todo:6} {total:6}")
            done, total = sum(r[1] for r in rows), sum(r[4] for r in rows)
            print(f"{'all':48} {done:6} {sum(r[2] for r in rows):6} {sum(r[3] for r in rows):6} {total:6}"
                  f"  ({100 * done / max(total, 1):.0f} % translated)")
    else:
        result = build(args.language, output=args.output)
        sys.stdout.write(result.stdout[-5000:])
        sys.stderr.write(result.stderr[-5000:])
        if result.returncode == 0:
            print(f"{args.language} edition: {(args.output or ROOT / '_build' / 'html' / args.language) / 'index.html'}")
        return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
