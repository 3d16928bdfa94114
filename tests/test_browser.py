"""The built HTML book in a real browser: Debian's Chromium driven by Playwright, served on 127.0.0.1.
Both editions: the English book at the site's root and the Chinese one in zh_CN/ (issue 22).

Needs `chromium` on PATH (`apt-get install chromium`; .ci/run installs it). Without it the tests
are skipped on a developer's machine and fail in CI.
"""
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]
EDITIONS = {"en": "", "zh_CN": "zh_CN/"}
REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].removesuffix(".git")


@pytest.fixture(scope="module")
def site(built_book):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(built_book)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


DEFAULT_VIEWPORT = {"width": 1280, "height": 720}  # a new context's


@pytest.fixture(scope="module")
def tab(browser, site):
    """One tab for the module's tests: a page that goes to another page of the same site keeps its
    renderer process, where a page in a new context starts one (about half the browser's CPU
    time here). Each load starts with empty storage, as a first visit does."""
    context = browser.new_context(viewport=DEFAULT_VIEWPORT)
    context.add_init_script("try { localStorage.clear(); sessionStorage.clear(); } catch (e) {}")
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda error: tab.errors.append(f"pageerror: {error}"))
    tab.on("console", lambda msg: msg.type == "error" and tab.errors.append(f"console: {msg.text}"))
    tab.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route: route.abort())
    yield tab
    context.close()


@pytest.fixture
def page(tab):
    """The tab, reset for one test: it records this test's JavaScript errors, may reach only the
    local book server, and has a new context's viewport."""
    tab.goto("about:blank")
    tab.set_viewport_size(DEFAULT_VIEWPORT)
    tab.errors.clear()
    return tab


@pytest.mark.parametrize("entry", CHAPTERS)
def test_chapter_has_a_colab_link_to_its_notebook(page, site, entry):
    page.goto(f"{site}/{entry}.html")
    expected = f"https://colab.research.google.com/github/{REPO.split('github.com/')[1]}/blob/main/{entry}.ipynb"
    link = page.locator(f'a[href="{expected}"]')
    assert link.count() == 1
    page.locator('button[aria-label="Launch interactive content"]').click()
    link.wait_for(state="visible", timeout=5000)


def test_figures_have_pixels(page, site):
    page.goto(f"{site}/notebooks/03_dependency_graph.html")
    widths = page.eval_on_selector_all(".cell_output img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) == 1 and widths[0] > 500  # the object-graph figure


def test_exercise_solution_opens(page, site):
    page.goto(f"{site}/notebooks/01_keras_weights.html")
    page.wait_for_selector("div.solution.toggle-hidden")  # sphinx-togglebutton has folded it
    solution = page.locator("div.solution").first
    body = solution.locator("section").first
    assert not body.is_visible()
    assert not solution.locator("div.cell div.cell_output").first.is_visible()
    solution.locator("button.toggle-button").click()
    body.wait_for(state="visible", timeout=5000)
    # an executed solution: the code cell and the output it printed are inside the dropdown
    assert solution.locator("div.cell div.cell_output").first.is_visible()


def test_search_finds_the_chapter(page, site):
    page.goto(f"{site}/search.html?q=CheckpointManager")
    page.wait_for_selector("#search-results li a", timeout=10000)
    hits = page.eval_on_selector_all("#search-results li a", "links => links.map(a => a.href)")
    assert any("02_writing_checkpoints" in hit for hit in hits)


def test_next_and_previous_navigation(page, site):
    page.goto(f"{site}/notebooks/01_keras_weights.html")
    page.locator("a.right-next").click()
    page.wait_for_url("**/02_writing_checkpoints.html")
    page.locator("a.left-prev").click()
    page.wait_for_url("**/01_keras_weights.html")


# --- Every page as readers meet it: desktop and phone, light and dark -------------------------

VIEWPORTS = {"desktop": (1300, 900), "phone": (390, 844)}

# WCAG relative luminance and contrast, from the colours the browser actually rendered. A text's
# backdrop is the first ancestor with an opaque background (the page's, if none).
CONTRAST_JS = r"""() => {
  const rgba = s => { const m = s.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
                               return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const backdrop = el => { for (let e = el; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
                                                                       if (c[3] > 0.5) return c; }
                           return rgba(getComputedStyle(document.body).backgroundColor); };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const worst = [];
  for (const el of document.querySelectorAll('.cell_output table th, .cell_output table td, .cell_output table code')) {
    if (!el.textContent.trim()) continue;
    const r = ratio(rgba(getComputedStyle(el).color), backdrop(el));
    if (r < 4.5) worst.push(`${el.tagName} "${el.textContent.trim().slice(0, 30)}": ${r.toFixed(2)}:1`);
  }
  // A figure is readable on any theme when it brings its own opaque backdrop behind its black text.
  for (const img of document.querySelectorAll('.cell_output img')) {
    const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
    const corner = ctx.getImageData(1, 1, 1, 1).data;
    const own = corner[3] === 255 ? [corner[0], corner[1], corner[2]] : backdrop(img);
    const r = ratio([0, 0, 0], own);
    if (r < 4.5) worst.push(`figure ${img.src.split('/').pop().slice(0, 20)}: ${r.toFixed(2)}:1`);
  }
  return worst;
}"""

OVERFLOW_JS = """() => document.documentElement.scrollWidth - document.documentElement.clientWidth"""

# The width of the widest element that sticks out of the page's main column (the usual culprits are
# long unbroken lines in outputs and wide tables that do not scroll in their own box).
WIDEST_JS = """() => { const w = document.documentElement.clientWidth; let worst = '';
  for (const el of document.querySelectorAll('main *')) { const r = el.getBoundingClientRect();
    if (r.right > w + 1 && getComputedStyle(el).position !== 'fixed') {
      const inScroller = el.closest('.cell_output table, .pst-scrollable-table-container, pre, .highlight');
      if (!inScroller || inScroller === el) { worst = `${el.tagName}.${el.className}`; break; } } }
  return worst; }"""


def set_theme(page, theme):
    page.evaluate("t => { document.documentElement.dataset.theme = t; document.documentElement.dataset.mode = t; }", theme)
    page.wait_for_timeout(50)


# The Chinese edition has the English pages' layout and outputs: its own text is checked on a sample
# (a table page, a chapter with a figure, one with wide outputs, the glossary) to keep the suite short.
CHINESE_SAMPLE = ["intro", "notebooks/03_dependency_graph", "notebooks/07_serving", "glossary"]


@pytest.mark.parametrize("edition", EDITIONS)
@pytest.mark.parametrize("entry", PAGES)
def test_page_loads_cleanly_and_reads_well_on_desktop_and_phone_in_light_and_dark(page, site, entry, edition):
    """Every page of both editions loads (200, a title, its edition's lang, every image, no script
    error, no failed request); every English page and the Chinese sample, loaded once, then reads
    well at both widths in both themes: contrast, figures not shrunk, no sideways scrolling."""
    failed_requests = []
    listeners = {"requestfailed": lambda r: r.url.startswith(site) and failed_requests.append(r.url),
                 "response": lambda r: r.status >= 400 and failed_requests.append(f"{r.status} {r.url}")}
    for event, listener in listeners.items():
        page.on(event, listener)
    try:
        check_page(page, site, entry, edition, failed_requests)
    finally:
        for event, listener in listeners.items():
            page.remove_listener(event, listener)


def check_page(page, site, entry, edition, failed_requests):
    response = page.goto(f"{site}/{EDITIONS[edition]}{entry}.html", wait_until="load")
    assert response.status == 200
    assert page.title()
    assert page.evaluate("document.documentElement.lang") == edition.replace("_", "-")
    broken = page.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == []
    page.wait_for_timeout(200)  # late script errors
    problems = []
    for name, (width, height) in VIEWPORTS.items() if edition == "en" or entry in CHINESE_SAMPLE else ():
        page.set_viewport_size({"width": width, "height": height})
        for theme in ("light", "dark"):
            set_theme(page, theme)
            problems += [f"{name}/{theme}: {p}" for p in page.evaluate(CONTRAST_JS)]
            if name == "phone":
                shrunk = page.eval_on_selector_all(
                    ".cell_output img", "imgs => imgs.filter(i => i.getBoundingClientRect().width < 0.95 * i.naturalWidth)"
                                        ".map(i => `${Math.round(i.getBoundingClientRect().width)} of ${i.naturalWidth} px`)")
                problems += [f"{name}/{theme}: figure shrunk to {s}, its labels too small" for s in shrunk]
                overflow = page.evaluate(OVERFLOW_JS)
                if overflow > 0:
                    problems.append(f"{name}/{theme}: page scrolls sideways by {overflow}px ({page.evaluate(WIDEST_JS)})")
    assert not problems, problems[:10]
    assert not failed_requests, failed_requests
    # A page with no icon of its own makes the browser ask for /favicon.ico, a 404 on this site.
    icon = page.eval_on_selector('link[rel~="icon"]', "l => l.href")
    assert page.request.get(icon).status == 200, icon
    assert [e for e in page.errors if "ERR_FAILED" not in e] == []


# --- The Chinese edition ------------------------------------------------------------------------

def test_every_page_links_to_itself_in_the_other_edition(built_book):
    """Every page's switch names the same page (tests/test_book.py checks that each link resolves)."""
    for edition, folder in EDITIONS.items():
        for entry in PAGES:
            page = built_book / folder / f"{entry}.html"
            links = re.findall(r'<a href="([^"]+)" class="[^"]*book-language-switch', page.read_text())
            assert len(links) == 1, (page, links)
            target = (page.parent / links[0]).resolve()
            other = built_book / EDITIONS["zh_CN" if edition == "en" else "en"] / f"{entry}.html"
            assert target == other.resolve(), (page, links)


@pytest.mark.parametrize("entry", ["intro", "notebooks/01_keras_weights", "glossary"])
def test_language_switch_lands_on_the_same_page_in_the_other_edition_and_back(page, site, entry):
    page.goto(f"{site}/{entry}.html")
    page.locator("a.book-language-switch").click()
    page.wait_for_url(f"{site}/zh_CN/{entry}.html")
    assert page.evaluate("document.documentElement.lang") == "zh-CN"
    page.locator("a.book-language-switch").click()
    page.wait_for_url(f"{site}/{entry}.html")


def test_language_switch_works_offline_from_the_files_and_on_a_phone(browser, built_book):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    chapter = built_book / "notebooks" / "03_dependency_graph.html"
    page.goto(chapter.as_uri())
    switch = page.locator("a.book-language-switch")
    assert switch.is_visible()
    switch.click()
    page.wait_for_url((built_book / "zh_CN" / "notebooks" / "03_dependency_graph.html").as_uri())
    page.locator("a.book-language-switch").click()
    page.wait_for_url(chapter.as_uri())
    context.close()


# Each character drawn in the page's own font. A missing glyph is drawn as the same empty box
# whatever the character ("tofu"), like U+10FFFD, a private-use code point no font draws.
GLYPHS_JS = r"""([selector, chars]) => {
  const font = getComputedStyle(document.querySelector(selector)).fontFamily;
  const draw = ch => { const c = document.createElement('canvas'); c.width = c.height = 64;
                       const x = c.getContext('2d'); x.font = `48px ${font}`; x.fillText(ch, 4, 52);
                       return Array.from(x.getImageData(0, 0, 64, 64).data).join(','); };
  const tofu = draw('\u{10FFFD}');
  return {font, missing: chars.filter(ch => draw(ch) === tofu), distinct: new Set(chars.map(draw)).size};
}"""


def test_chinese_text_renders_with_a_real_font_not_tofu(page, site):
    page.goto(f"{site}/zh_CN/intro.html")
    heading = page.locator("main h1").first.inner_text()
    assert "检查点" in heading
    chars = list("检查点签名依赖图恢复")
    for selector in ("main h1", "main p"):
        result = page.evaluate(GLYPHS_JS, [selector, chars])
        assert result["missing"] == [] and result["distinct"] == len(chars), (
            f"{selector} in {result['font']}: CJK drawn as tofu (apt-get install fonts-noto-cjk)", result)
