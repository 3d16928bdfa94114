"""What a save wrote on disk: a directory tree with sizes, and total sizes."""
from pathlib import Path


def size_on_disk(path):
    """Bytes in a file, or in all files under a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"'{path}' does not exist")
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(n):
    """1234567 -> '1.2 MB' (decimal units, one decimal, as file managers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


class Tree:
    """A directory listing drawn like `tree`, with sizes; `str()` gives the text."""

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"'{root}' is not a directory")

    def lines(self):
        out = [f"{self.root.as_posix().rstrip('/')}/  ({human_size(size_on_disk(self.root))})"]
        out += self._walk(self.root, "")
        return out

    def _walk(self, folder, indent):
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
        out = []
        for i, entry in enumerate(entries):
            last = i == len(entries) - 1
            branch, extend = ("└── ", "    ") if last else ("├── ", "│   ")
            if entry.is_dir():
                out.append(f"{indent}{branch}{entry.name}/")
                out += self._walk(entry, indent + extend)
            else:
                out.append(f"{indent}{branch}{entry.name}  {human_size(entry.stat().st_size)}")
        return out

    def __repr__(self):
        return "\n".join(self.lines())


def directory_tree(path):
    """The files under `path` as a tree with sizes (what `tree -h` would show)."""
    return Tree(path)
