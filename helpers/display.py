"""Show the book's helper code in the page, so what the prose explains is exactly what runs."""
import inspect


def show_source(obj):
    """Display the source of a helper function or class as a highlighted code block."""
    from IPython.display import Markdown
    return Markdown(f"```python\n# from {inspect.getmodule(obj).__name__}\n{inspect.getsource(obj)}```")
