"""Every kernel and helper test of this session runs in the environment the stored outputs came
from (scripts/notebook_kernel.py: kernel start-up file, a scratch TMPDIR, the offline Keras cache)."""
from scripts.notebook_kernel import prepare_environment

prepare_environment()


# --- The order files are handed out in ------------------------------------------------------------
# pytest-xdist (--dist loadfile) gives each test process the next whole file in collection order.
# Longest first, so that short files fill the end of a run and neither process waits long for the
# other: a chapter weighs the seconds of its stored run (metadata "book_execution", written by
# scripts/execute_notebooks.py); a test module, the seconds it took in a full run of the suite
# (2026-12-03, the slower ones only; any other weighs 0 and keeps its place after these).
SLOW_TEST_MODULES = {
    "tests/test_browser.py": 74, "tests/test_model_server.py": 42, "tests/test_distributed.py": 35,
    "tests/test_mobilenet_standin.py": 16, "tests/test_serving_config.py": 14,
    "tests/test_translation.py": 13, "tests/test_when_training_dies.py": 13,
    "tests/test_sandbox.py": 11, "tests/test_imagenet_litert.py": 8,
}


def _file_seconds(path, cache={}):  # noqa: B006 (one read per notebook)
    if path not in cache:
        if path.endswith(".ipynb"):
            import json
            with open(path, encoding="utf-8") as notebook:
                cache[path] = json.load(notebook)["metadata"].get("book_execution", {}).get("seconds", 0)
        else:
            cache[path] = SLOW_TEST_MODULES.get(path, 0)
    return cache[path]


def pytest_collection_modifyitems(config, items):
    """Longest files first (a stable sort: each file's tests keep their order)."""
    items.sort(key=lambda item: -_file_seconds(item.nodeid.split("::")[0]))
