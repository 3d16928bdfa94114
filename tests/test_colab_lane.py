"""scripts/colab_lane.py's verdict: what counts as a difference (as nbval sees it) and what fails."""
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import colab_lane  # noqa: E402

SENTENCE = "On Colab this line shows Colab's TensorFlow version."


def stream(text, name="stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def error(ename, evalue):
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=["tb"])


@pytest.fixture
def book(tmp_path):
    """A one-chapter book: setup cell, a version line, a cell meant to fail, an ignored timing."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "sanitize.cfg").write_text("regex: 0x[0-9a-f]+\nreplace: 0xADDRESS\n")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# Chapter\n\n{SENTENCE}"),
        nbformat.v4.new_code_cell("setup", execution_count=1),
        nbformat.v4.new_code_cell("versions", execution_count=2, outputs=[stream("TensorFlow 2.21.0 at 0x7f01\n")]),
        nbformat.v4.new_code_cell("fails", execution_count=3, outputs=[error("ValueError", "bad")],
                                  metadata={"tags": ["raises-exception"]}),
        nbformat.v4.new_code_cell("timing", execution_count=4, outputs=[stream("3.1 s\n")],
                                  metadata={"tags": ["nbval-ignore-output"]}),
    ])
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "01_x.ipynb"
    path.write_text(nbformat.writes(nb))
    return {"01_x": path}


def result(version_line="TensorFlow 2.21.0 at 0x7f99\n", setup=(), fails=(error("ValueError", "bad"),),
           imported=("psutil",), pip_after=None):
    return {"setup_index": 1, "imported_before_setup": list(imported),
            "pip_after": pip_after or {"psutil": "5.9.5", "keras": "3.15.1"},
            "cells": [None, {"outputs": list(setup)}, {"outputs": [stream(version_line)]},
                      {"outputs": list(fails)}, {"outputs": [stream("9.9 s\n")]}]}


BASE = {"psutil": "5.9.5", "keras": "3.13.2"}


def test_same_outputs_after_sanitising_pass(book):
    problems, stale = colab_lane.verdict(book, {"01_x": result()}, [], BASE)
    assert problems == [] and stale == []


def test_an_unlisted_difference_fails_and_names_both_sides(book):
    problems, _ = colab_lane.verdict(book, {"01_x": result("TensorFlow 2.20.0 at 0x7f99\n")}, [], BASE)
    assert len(problems) == 1
    assert "01_x [2]: output differs and colab/differences.yml does not list it" in problems[0]
    assert "2.21.0" in problems[0] and "2.20.0" in problems[0]


def test_a_listed_difference_passes_only_with_its_text_and_its_sentence_on_the_page(book):
    entry = {"chapter": ["01_x"], "cell": 2, "differs": "TF version", "colab": "TensorFlow 2.20", "sentence": SENTENCE}
    colab = {"01_x": result("TensorFlow 2.20.0 at 0x7f99\n")}
    assert colab_lane.verdict(book, colab, [entry], BASE) == ([], [])
    missing = {**entry, "sentence": "A sentence nobody wrote."}
    assert "the page lacks the listed sentence" in colab_lane.verdict(book, colab, [missing], BASE)[0][0]
    other = {**entry, "colab": "TensorFlow 2.19"}
    assert "does not show 'TensorFlow 2.19'" in colab_lane.verdict(book, colab, [other], BASE)[0][0]
    assert colab_lane.verdict(book, {"01_x": result()}, [entry], BASE)[1] == [entry]  # no longer seen


def test_errors_fail_unless_the_cell_is_meant_to_raise(book):
    problems, _ = colab_lane.verdict(book, {"01_x": result(fails=[error("ValueError", "other")])}, [], BASE)
    assert problems == ["01_x [3]: output differs and colab/differences.yml does not list it: "
                        "evalue: stored …\"['bad']\" / Colab …\"['other']\""]
    broken = result()
    broken["cells"][2] = {"outputs": [error("NameError", "name 'tf' is not defined")]}
    problems, _ = colab_lane.verdict(book, {"01_x": broken}, [], BASE)
    assert "01_x [2]: unexpected error NameError: name 'tf' is not defined" in problems


def test_the_setup_cell_must_print_no_pip_error_and_move_nothing_imported(book):
    noisy = result(setup=[stream("ERROR: pip's dependency resolver does not currently take into account\n",
                                 "stderr")])
    assert any("setup cell printed: ERROR: pip's dependency resolver" in p
               for p in colab_lane.verdict(book, {"01_x": noisy}, [], BASE)[0])
    moved = result(pip_after={"psutil": "5.9.8", "keras": "3.15.1"})
    assert colab_lane.verdict(book, {"01_x": moved}, [], BASE)[0] == [
        "01_x: the setup cell moved distributions the kernel had imported: ['psutil']"]


def test_comparison_ignores_what_nbval_ignores():
    rules = []
    with_image = [nbformat.v4.new_output("display_data", data={"image/png": "AAA", "text/plain": "<Figure>"})]
    other_image = [nbformat.v4.new_output("display_data", data={"image/png": "BBB", "text/plain": "<Figure>"})]
    assert colab_lane.comparable(with_image, rules) == colab_lane.comparable(other_image, rules)
    split = [stream("a"), stream("b\n")]
    assert colab_lane.comparable(split, rules) == colab_lane.comparable([stream("ab\n")], rules)


def test_problems_fail_the_lane_unless_enforcement_is_off(capsys):
    import time
    assert colab_lane.finish([], True, time.perf_counter(), 14) == 0
    assert colab_lane.finish(["01_x [2]: differs"], True, time.perf_counter(), 14) == 1
    assert colab_lane.finish(["01_x [2]: differs"], False, time.perf_counter(), 14) == 0
    out = capsys.readouterr().out
    assert "PROBLEM 01_x [2]: differs" in out and "enforce: false, so these are reported, not failed" in out


def test_a_stack_whose_python_is_missing_is_a_problem_not_a_crash():
    with pytest.raises(RuntimeError, match=r"no Python 9\.9 found"):
        colab_lane.stack_python("# python: 9.9\n")


def test_an_entry_can_name_its_cell_by_a_line_of_source_which_must_match_one_cell(book):
    """Cell indexes move whenever a chapter gains a cell above; a line of the cell's source does not."""
    colab = {"01_x": result("TensorFlow 2.20.0 at 0x7f99\n")}
    entry = {"chapter": "01_x", "cell": "versions", "differs": "version", "colab": "TensorFlow 2.20",
             "sentence": SENTENCE}
    assert colab_lane.verdict(book, colab, [entry], BASE) == ([], [])
    nowhere = {**entry, "cell": "print(tf.__version__)"}
    problems, _ = colab_lane.verdict(book, colab, [nowhere], BASE)
    assert "0 code cells contain 'print(tf.__version__)' (one must)" in problems[0]
    assert any("does not list it" in p for p in problems)
    several = {**entry, "cell": "s"}  # in "setup", "versions", "fails"
    assert "3 code cells contain 's'" in colab_lane.verdict(book, colab, [several], BASE)[0][0]
