"""Sphinx extension: drop repeated <script> entries from each page.

Sphinx 7.4 (the newest that Jupyter Book 1 can use) emits inline scripts added after the builder
starts twice, once with filename None and once with ''. The second `const THEBE_JS_URL = ...`
throws `SyntaxError: Identifier 'THEBE_JS_URL' has already been declared` on every page. Fixed
upstream in Sphinx 8 (sphinx-doc/sphinx#13402).
"""


def _key(script):
    attributes = getattr(script, "attributes", {}) or {}
    return (getattr(script, "filename", None) or "",
            tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
