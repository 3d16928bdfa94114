#!/usr/bin/env python
"""Build the student edition: the same book with every exercise solution left out.

    .venv/bin/python scripts/build_student_edition.py [OUTPUT_DIR]    # default _build/student

The HTML lands in OUTPUT_DIR/_build/html. It uses _config.yml with sphinx-exercise's
`hide_solutions: true` added, and the same warnings-as-errors build as the main book.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def main():
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "_build" / "student"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    config["title"] = config.get("title", "") + " (student edition)"
    local = config["sphinx"].get("local_extensions", {})  # paths are relative to the config file
    config["sphinx"]["local_extensions"] = {name: str(ROOT / path) for name, path in local.items()}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(config, f)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jupyter_book), "build", str(ROOT), "--config", f.name,
                             "--path-output", str(output), "-W", "-n", "--keep-going", "-q"])
    Path(f.name).unlink()
    if result.returncode == 0:
        print(f"student edition: {output / '_build' / 'html' / 'index.html'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
