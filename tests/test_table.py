import pytest

from helpers.table import Table


def test_rows_must_match_columns():
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        Table(["a", "b"], [("x",)])


def test_text_and_html_escape():
    table = Table(["name", "value"], [("<a>", 1)], note="n")
    assert repr(table).splitlines() == ["name  value", "----  -----", "<a>   1", "n"]
    assert "&lt;a&gt;" in table._repr_html_()
