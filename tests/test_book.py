"""The book as a whole: table of contents, Colab wiring, status page, troubleshooting, links."""
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def toc_files():
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def source_of(entry):
    matches = [p for p in ROOT.glob(entry + ".*") if p.suffix in (".md", ".ipynb")]
    assert len(matches) == 1, f"{entry}: {matches}"
    return matches[0]


def test_every_notebook_is_in_the_table_of_contents():
    listed = {source_of(entry) for entry in toc_files()}
    assert set(NOTEBOOKS) <= listed


def test_colab_setup_cells_install_from_the_configured_repository():
    repo = CONFIG["repository"]["url"].removesuffix(".git")
    for path in NOTEBOOKS:
        code = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(code[0]["source"])
        # this book's helpers by distribution name: any other module called `helpers` won't do
        assert 'importlib.metadata.version("ckpt-vs-savedmodel-helpers")' in first, path.name
        urls = re.findall(r"git\+(https://\S+?)[\"']", first)
        assert urls == [repo], f"{path.name}: installs from {urls}, _config.yml says {repo}"
        assert "tensorflow" not in first.split("git+")[0].lower().replace("tensorflow itself", "")


def test_status_page_is_generated_from_the_notebooks():
    sys.path.insert(0, str(ROOT / "scripts"))
    from execute_notebooks import status_page
    assert (ROOT / "status.md").read_text() == status_page(NOTEBOOKS), \
        "status.md is stale: run scripts/execute_notebooks.py --status-only"
    for path in NOTEBOOKS:
        assert "book_execution" in json.loads(path.read_text())["metadata"], f"{path.name} not run by the script"


def produced_texts():
    """Everything the notebooks printed or raised, and the tests' source (for asserted errors)."""
    texts = []
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                texts.append("".join(out.get("text", "")))
                texts.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
                texts.append("".join(out.get("data", {}).get("text/plain", "")))
    texts += [p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_book.py"]
    return ANSI.sub("", "\n".join(texts))


def test_troubleshooting_entries_quote_produced_errors():
    page = (ROOT / "troubleshooting.md").read_text()
    headings = re.findall(r"^### (.+)$", page, flags=re.M)
    quoted = [re.match(r"^(`+) ?(.+?) ?\1$", h) for h in headings]
    messages = [m.group(2) for m in quoted if m]
    assert len(messages) >= 15
    produced = produced_texts()
    missing = [m for m in messages if m not in produced]
    assert not missing, f"not produced by any cell or test: {missing}"


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])


def test_every_internal_link_and_anchor_resolves(built_book):
    pages = {}
    for page in built_book.rglob("*.html"):
        if "_static" in page.parts:
            continue
        parser = Links()
        parser.feed(page.read_text(errors="replace"))
        pages[page] = parser
    broken, checked = [], 0
    for page, parser in pages.items():
        for link in parser.links:
            url = urlparse(link)
            if url.scheme or link.startswith(("//", "mailto:", "javascript:")) or not (url.path or url.fragment):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.exists():
                broken.append(f"{page.name}: {link}")
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if url.fragment not in ids:
                    broken.append(f"{page.name}: {link} (no such anchor)")
    assert checked > 300 and not broken, broken[:20]


def _plain(text):
    """Text as a reader sees it: no HTML tags or entities, no Markdown marks, single spaces."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"\]\([^)]*\)", "", text)
    return " ".join(re.sub(r"[`*_\[\]]", " ", text).split())


def solution_snippets(path):
    """Lines that only a solution holds (prose or code, 30+ characters), per solution."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_student_edition import student_notebook
    import nbformat
    full = nbformat.read(path, as_version=4)
    kept = "\n".join(c.source for c in student_notebook(nbformat.read(path, as_version=4)).cells)
    removed = [line.strip() for c in full.cells for line in c.source.splitlines()
               if len(line.strip()) >= 30 and line.strip() not in kept and "{solution" not in line]
    # A probe must be distinctive as a reader sees it: a line that is mostly a link target
    # ("[server code](https://...)") reads as two common words found on other pages.
    return [plain[:60] for plain in map(_plain, removed) if len(plain) >= 30]


def test_student_edition_leaks_no_solution(built_book, student_edition):
    """No solution text in any student page, download or notebook; Colab opens the student branch."""
    html_root = student_edition / "_build" / "html"
    student_files = [p for p in [*html_root.rglob("*"), *(student_edition / "notebooks").glob("*")]
                     if p.is_file() and p.suffix in (".html", ".ipynb", ".md", ".txt", ".js")]
    student_text = {p: _plain(p.read_text(errors="replace")) for p in student_files}
    checked = 0
    for path in NOTEBOOKS:
        page = _plain((built_book / "notebooks" / (path.stem + ".html")).read_text())
        for snippet in solution_snippets(path):
            if snippet not in page:  # rendered differently (a table, a heading): not a usable probe
                continue
            checked += 1
            leaks = [p.relative_to(student_edition).as_posix() for p, t in student_text.items() if snippet in t]
            assert not leaks, f"{path.name}: solution text {snippet!r} in {leaks}"
        notebook = (student_edition / "notebooks" / path.name).read_text()
        assert "{solution" not in notebook and "{exercise" in notebook, path.name
    assert checked >= 2 * len(NOTEBOOKS), f"only {checked} solution lines could be probed"
    chapter = (html_root / "notebooks" / "01_keras_weights.html").read_text()
    colab = re.findall(r'href="(https://colab[^"]+)"', chapter)
    assert colab and all("/blob/student/" in link for link in colab), colab


def test_set_repository_repoints_config_and_every_setup_cell(tmp_path):
    """scripts/set_repository.py moves the config and all setup cells together, and nothing else."""
    import shutil
    sys.path.insert(0, str(ROOT / "scripts"))
    from set_repository import set_repository
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    before = {p.name: p.read_text() for p in (tmp_path / "notebooks").glob("*.ipynb")}
    changed = set_repository("a-teacher/ml-course", branch="spring", root=tmp_path)
    assert len(changed) == 1 + len(NOTEBOOKS)
    old_config, new_config = (ROOT / "_config.yml").read_text(), (tmp_path / "_config.yml").read_text()
    assert sum(a != b for a, b in zip(old_config.splitlines(), new_config.splitlines())) == 2
    assert len(old_config.splitlines()) == len(new_config.splitlines())
    config = yaml.safe_load(new_config)
    assert config["repository"] == {**CONFIG["repository"], "url": "https://github.com/a-teacher/ml-course",
                                    "branch": "spring"}
    for path in (tmp_path / "notebooks").glob("*.ipynb"):
        first = "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])
        assert re.findall(r"git\+(https://\S+?)[\"']", first) == ["https://github.com/a-teacher/ml-course"]
        old, new = before[path.name].splitlines(), path.read_text().splitlines()
        assert sum(a != b for a, b in zip(old, new)) == 1 and len(old) == len(new), path.name
    assert set_repository("a-teacher/ml-course", branch="spring", root=tmp_path) == []  # idempotent
    with pytest.raises(ValueError, match="OWNER/REPO"):
        set_repository("https://github.com/x", root=tmp_path)
