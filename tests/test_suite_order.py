"""The suite hands its files to the two test processes longest first (conftest.py)."""
import itertools


def test_files_come_longest_first_and_xdist_keeps_that_order(request):
    seconds = request.session.config.pluginmanager.get_plugin(
        str(request.config.rootpath / "conftest.py"))._file_seconds
    files = [path for path, _ in itertools.groupby(item.nodeid.split("::")[0] for item in request.session.items)]
    assert len(files) == len(set(files)), "a file's tests are not together"
    weights = [seconds(path) for path in files]
    assert weights == sorted(weights, reverse=True), list(zip(files, weights))[:10]
    chapters = sorted((request.config.rootpath / "notebooks").glob("*.ipynb"))
    assert chapters and all(seconds(f"notebooks/{chapter.name}") > 0 for chapter in chapters)  # each has its time
    assert request.config.getoption("loadscopereorder") is False  # else xdist sorts them by test count
