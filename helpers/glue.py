"""Glue a value from a notebook into the book's prose (`{glue:text}` roles), wherever the notebook runs.

The book's build uses myst-nb's `glue`. Colab and plain Jupyter do not have myst-nb (a Sphinx
extension, with Sphinx behind it); there the same display message is sent without it, so the
chapters run unchanged and a notebook executed anywhere still carries its glued values.
"""
try:
    from myst_nb import glue
except ImportError:  # the message myst-nb's glue sends (myst_nb/ext/glue/__init__.py)
    from IPython.core.formatters import format_display_data
    from IPython.display import display as _display

    GLUE_PREFIX = "application/papermill.record/"

    def glue(name, variable, display=True):
        """Display `variable` (or hide it) with the metadata that names it `name` for the book."""
        mimebundle, metadata = format_display_data(variable)
        prefix = "" if display else GLUE_PREFIX
        metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
        _display({prefix + k: v for k, v in mimebundle.items()}, raw=True, metadata=metadata)
