"""A small table that prints as aligned text and renders as HTML in the book."""
import html


class Table:
    """Rows under named columns; `str()` gives aligned plain text, notebooks show HTML."""

    def __init__(self, columns, rows, note=""):
        self.columns = list(columns)
        self.rows = [tuple(row) for row in rows]
        self.note = note
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(self.columns)}")

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def column(self, name):
        """The values of one column, by name."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def __repr__(self):
        cells = [self.columns] + [[str(c) for c in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def _repr_html_(self):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td><code>{html.escape(str(c))}</code></td>" for c in row) + "</tr>"
            for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
