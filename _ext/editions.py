"""Sphinx extension: one book, two languages, from the same English sources (issue 22).

The Chinese edition is the English notebooks and pages built with `language = "zh_CN"` and the
gettext catalogs in locales/zh_CN/LC_MESSAGES (scripts/translation.py makes and builds them). This
extension adds what Sphinx and the book's extensions lack for that:

- every page links to the same page in the other edition (a button in the page's header, and a
  `<link rel="alternate" hreflang>`), with relative URLs, so the switch works offline;
- messages with no words to translate (only inline code, numbers, dates, units) stay out of the
  catalogs: the status page's run times would otherwise turn stale at every re-run;
- sphinx-exercise's exercise titles reach the catalogs (the directive gives them no source), and
  the book's part captions are translated (sphinx-external-toc adds them after Sphinx translates);
- a translated paragraph that pastes a number from its own notebook (`{glue:text}` without a
  path) finds it: Sphinx parses translations as plain Markdown, without the notebook's glue data,
  so such a reference is pointed at its own notebook (`/notebooks/x.ipynb::key`), which myst-nb
  reads from the same stored outputs.
"""
import re

from docutils import nodes
from sphinx.transforms import SphinxTransform
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

# Where each edition lives under the site root: the English book at the root, the others below.
EDITIONS = {"en": "", "zh_CN": "zh_CN/"}
NAMES = {"en": "English", "zh_CN": "中文"}
HREFLANG = {"en": "en", "zh_CN": "zh-Hans"}
# 2+ letters in any script make a word; units beside a number do not.
WORD = re.compile(r"[^\W\d_]{2,}")
UNITS = {"ms", "us", "µs", "KB", "kB", "MB", "GB", "KiB", "MiB", "GiB", "px"}
SAME_DOCUMENT_GLUE = re.compile(r"\{glue:text\}`(?P<body>[^`]+)`")


def has_words(node):
    """Whether the text of `node`, without its inline code, has a word a translator would change."""
    text = " ".join(t.astext() for t in node.findall(nodes.Text)
                    if not any(isinstance(a, (nodes.literal, nodes.raw)) for a in _ancestors(t, node)))
    return any(w not in UNITS for w in WORD.findall(text))


def _ancestors(node, stop):
    node = node.parent
    while node is not None and node is not stop:
        yield node
        node = node.parent


class PrepareMessages(SphinxTransform):
    """Before Sphinx extracts or translates messages (sphinx.transforms.i18n.Locale, priority 20)."""
    default_priority = 15

    def apply(self):
        from sphinx_exercise.nodes import exercise_subtitle
        for node in self.document.findall(exercise_subtitle):
            if not node.source:
                exercise = node.parent.parent
                located = exercise
                while located is not None and not located.source:
                    located = located.parent
                node.source, node.line = located.source, located.line
                node.rawsource = exercise["book_subtitle"] = node.astext()
        for node in self.document.findall(nodes.TextElement):
            if isinstance(node, (nodes.paragraph, nodes.title, nodes.term, nodes.subtitle, nodes.caption,
                                 nodes.rubric, nodes.line)) and not has_words(node):
                node["translatable"] = False


class TranslatedToctreeCaptions(SphinxTransform):
    """The captions of the book's parts ("Training checkpoints") are in the root page's catalog, but
    sphinx-external-toc inserts the toctrees (priority 100) after Sphinx translated the page (20)."""
    default_priority = 110  # before the toctrees are collected for the navigation (doctree-read)

    def apply(self):
        if (self.config.language or "en") == "en":
            return
        import os
        from sphinx import addnodes
        from sphinx.locale import init as init_locale
        from sphinx.util.i18n import docname_to_domain
        dirs = [os.path.join(self.env.srcdir, d) for d in self.config.locale_dirs]
        catalog, found = init_locale(dirs, self.config.language,
                                     docname_to_domain(self.env.docname, self.config.gettext_compact))
        if not found:
            return
        for node in self.document.findall(addnodes.toctree):
            if node.get("rawcaption"):
                node["caption"] = catalog.gettext(node["rawcaption"])


class TranslatedExerciseTitles(SphinxTransform):
    """sphinx-exercise titles a solution from a copy of its exercise taken before translation:
    after Sphinx's Locale transform (20), copy the translated exercise instead."""
    default_priority = 21

    def apply(self):
        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for node in self.document.findall(nodes.Element):
            label = node.get("label") if "book_subtitle" in node else None
            if label in registry and registry[label].get("docname") == self.env.docname:
                registry[label]["node"] = node.deepcopy()


class ExerciseTitlesForGettext(SphinxPostTransform):
    """sphinx-exercise rebuilds an exercise's title after reading ("Exercise (subtitle)"), before the
    gettext builder extracts messages: give the new title the subtitle as its message."""
    default_priority = 25  # after sphinx_exercise's ResolveTitlesInExercises (20)
    builders = ("gettext",)

    def run(self):
        for node in self.document.findall(nodes.Element):
            if "book_subtitle" in node and node.children and isinstance(node[0], nodes.title):
                title = node[0]
                title.source, title.line = self.document["source"], node.line
                title.rawsource = node["book_subtitle"]
                title.uid = ""  # the gettext builder takes messages only from nodes with one


# A translation is one paragraph; at its start, these would make a list or a quote of it instead.
BLOCK_START = [(re.compile(r"^(\s*\d+)([.)])(?=\s)"), r"\1\\\2"), (re.compile(r"^(\s*)([-*+>])(?=\s)"), r"\1\\\2")]


def own_glue(body, path):
    """`key[:format]` as `path::key:format` (myst-nb reads `path::key` without a format wrongly)."""
    if "::" in body:
        return f"{{glue:text}}`{body}`"
    return f"{{glue:text}}`{path}::{body if ':' in body else body + ':s'}`"


def translated_fragment_parser(base):
    class Parser(base):
        """myst-nb's parser; in a translated fragment, `{glue:text}` without a path names its notebook."""

        def parse(self, inputstring, document):
            if not (document.current_source and document.current_source.endswith("<translated>")):
                return super().parse(inputstring, document)
            env = document.settings.env
            own = "/" + str(env.doc2path(env.docname, False))
            inputstring = SAME_DOCUMENT_GLUE.sub(lambda m: own_glue(m["body"], own), inputstring)
            # "1. 用 Keras 保存权重" is a chapter title, not a list: Sphinx would drop it silently
            for pattern, escaped in BLOCK_START:
                inputstring = pattern.sub(escaped, inputstring, count=1)
            super().parse(inputstring, document)
            only = document[0] if len(document.children) == 1 else None
            # Sphinx translates a title outside a section (an admonition's) as "msgstr" underlined
            # with "=" (sphinx.transforms.i18n.Locale, phase 2): one section holding only that title
            title = (isinstance(only, nodes.section) and len(only.children) == 1
                     and isinstance(only[0], nodes.title) and re.search(r"\n=+\s*$", inputstring))
            if not (isinstance(only, nodes.paragraph) or title):
                logger.warning("this translation is not one paragraph, so Sphinx ignores it: %r",
                               inputstring[:80], location=(env.docname, None), type="i18n")
    return Parser


def other_editions(app, pagename):
    """(language, name, relative URL) of this page in every other edition."""
    here = app.config.language or "en"
    to_root = "../" * (pagename.count("/") + EDITIONS.get(here, "").count("/"))
    return [(language, NAMES[language], f"{to_root}{folder}{pagename}.html")
            for language, folder in EDITIONS.items() if language != here]


def add_switch(app, pagename, templatename, context, doctree):
    others = other_editions(app, pagename)
    context["book_other_editions"] = others
    context["metatags"] = context.get("metatags", "") + "".join(
        f'\n<link rel="alternate" hreflang="{HREFLANG[language]}" href="{url}" />' for language, _, url in others)


def configure(app, config):
    from pathlib import Path
    config.templates_path.append(str(Path(__file__).parent / "templates"))
    options = config.html_theme_options
    options["article_header_end"] = ["language-switch.html", "article-header-buttons.html"]
    if (config.language or "en") != "en" and options.get("search_bar_text") == "Search this book...":
        del options["search_bar_text"]  # sphinx-book-theme then shows its own translated "Search..."


def setup(app):
    from myst_nb.sphinx_ import Parser
    app.add_source_parser(translated_fragment_parser(Parser), override=True)
    app.add_transform(PrepareMessages)
    app.add_transform(TranslatedExerciseTitles)
    app.add_transform(TranslatedToctreeCaptions)
    app.add_post_transform(ExerciseTitlesForGettext)
    app.connect("config-inited", configure)
    app.connect("html-page-context", add_switch)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
