"""Stored notebook outputs cannot go stale: the guard of scripts/execute_notebooks.py, on the committed notebooks
and on small notebooks made here to show that each kind of stale or broken output is caught."""
import contextlib
import io
import json
import os
import sys
import warnings

import nbformat
import pytest

from conftest import ROOT
from vitkit import records

sys.path.insert(0, str(ROOT / "scripts"))
import execute_notebooks as ex  # noqa: E402


@pytest.mark.parametrize("name", ex.NOTEBOOKS)
def test_stored_outputs_match_the_code_and_the_record(name):
    found = ex.problems(ROOT / name)
    assert not found, "\n".join(found)
    changed = ex.stale_modules(ROOT / name)
    if changed:  # a warning, not a failure: re-run before a change that alters the numbers lands
        warnings.warn(f"{name}: stored outputs predate changes to {', '.join(changed)}; "
                      f"re-run: python scripts/execute_notebooks.py {name}")


def test_stored_outputs_stay_light():
    total = sum(ex.output_bytes(nbformat.read(ROOT / n, as_version=4)) for n in ex.NOTEBOOKS)
    assert total <= ex.MAX_OUTPUT_BYTES, f"stored outputs take {total / 1e6:.1f} MB (limit 10 MB): smaller figures"


# ---- the guard on notebooks made here ------------------------------------------------------------------------

def _executed(tmp_path, metrics=None, code="x = 1", extra_outputs=()):
    """A notebook as execute() stores it: a results file, its show_record output, a stamp and the stamp cell."""
    metrics = metrics or {"test_acc": 0.7472, "epochs_run": 30, "nested": {"auc": 12.3456789}, "curve": [1, 2],
                          "by method": {"raw attention": {"hit": 0.596}}}
    results = tmp_path / "results" / "demo-full.json"
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"metrics": metrics}))
    printed, cwd = io.StringIO(), os.getcwd()
    os.chdir(tmp_path)  # show_record prints the path relative to the working folder, as in a notebook run
    try:
        with contextlib.redirect_stdout(printed):
            records.show_record(results)
    finally:
        os.chdir(cwd)
    printed = printed.getvalue()
    cell = nbformat.v4.new_code_cell(code, execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed), *extra_outputs]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Demo"), cell])
    stamp = {"code_hash": ex.code_hash(nb), "modules": {}, "commit": "0123456789abcdef", "results":
             "results/demo-full.json", "results_hash": ex._sha(results.read_bytes()), "hardware": {"cpu": "test"},
             "date": "2026-12-02 00:00:00", "wall_time_min": 1.0}
    nb.metadata[ex.STAMP_KEY] = stamp
    nb.cells.insert(0, ex._stamp_cell(stamp, "demo.ipynb"))
    path = tmp_path / "demo.ipynb"
    nbformat.write(nb, path)
    return path


def _edit(path, change):
    nb = nbformat.read(path, as_version=4)
    change(nb)
    nbformat.write(nb, path)


def test_a_clean_stamped_notebook_passes_and_markdown_edits_need_no_rerun(tmp_path):
    path = _executed(tmp_path)
    assert ex.problems(path, tmp_path) == []
    _edit(path, lambda nb: setattr(nb.cells[1], "source", "# Demo, reworded"))
    assert ex.problems(path, tmp_path) == []


def test_edited_code_is_caught_with_the_command_to_rerun(tmp_path):
    path = _executed(tmp_path)
    _edit(path, lambda nb: setattr(nb.cells[2], "source", "x = 2"))
    (found,) = ex.problems(path, tmp_path)
    assert "code cells changed" in found and "python scripts/execute_notebooks.py demo.ipynb" in found


def test_outputs_without_a_stamp_are_caught(tmp_path):
    path = _executed(tmp_path)
    _edit(path, lambda nb: nb.metadata.pop(ex.STAMP_KEY))
    (found,) = ex.problems(path, tmp_path)
    assert "without a run stamp" in found


@pytest.mark.parametrize("output, expected", [
    (nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=["ValueError: bad"]), "error"),
    (nbformat.v4.new_output("stream", name="stderr", text="Traceback (most recent call last):\n"), "traceback"),
    (nbformat.v4.new_output("stream", name="stdout", text="data in /home/me/data\n"), "path of the machine"),
    (nbformat.v4.new_output("stream", name="stderr", text="W1202 04:59:12.102 warn\n"), "timestamp"),
    (nbformat.v4.new_output("display_data", data={"image/png": "A" * 400_004, "text/plain": "<Figure>"}),
     "stores a 300 KB figure (limit 300 KB)"),
    (nbformat.v4.new_output("display_data", data={"text/plain": "Canvas(toolbar=Toolbar(...))"}), "Canvas widget"),
])
def test_errors_paths_and_timestamps_in_outputs_are_caught(tmp_path, output, expected):
    path = _executed(tmp_path, extra_outputs=[output])
    found = ex.problems(path, tmp_path)
    assert len(found) == 1 and expected in found[0], found


def test_numbers_that_disagree_with_the_record_are_caught(tmp_path):
    path = _executed(tmp_path)
    _edit(path, lambda nb: nb.cells[2].outputs[0].__setitem__(
        "text", nb.cells[2].outputs[0].text.replace("0.7472", "0.7572")))
    (found,) = ex.problems(path, tmp_path)
    assert "test_acc = 0.7572" in found and "0.7472" in found


def test_every_printed_number_is_compared_even_under_keys_with_spaces(tmp_path):
    path = _executed(tmp_path)
    _edit(path, lambda nb: nb.cells[2].outputs[0].__setitem__(
        "text", nb.cells[2].outputs[0].text.replace("raw attention.hit = 0.596", "raw attention.hit = 0.9")))
    (found,) = ex.problems(path, tmp_path)
    assert "by method.raw attention.hit = 0.9" in found


def test_a_results_file_changed_after_the_run_is_caught(tmp_path):
    path = _executed(tmp_path)
    (tmp_path / "results" / "demo-full.json").write_text(json.dumps({"metrics": {"test_acc": 0.7472}}) + "\n")
    (found,) = ex.problems(path, tmp_path)
    assert "changed after the run" in found


def test_show_record_prints_what_the_guard_reads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = records.save_results(tmp_path / "results" / "r.json", metrics={"acc": 0.123456789, "n": 3, "name": "vit",
                                "per": {"a": 1.5}, "curve": [0.1]}, config={}, seed=0, dataset="d", wall_time_s=1.0)
    records.show_record(path)
    out = capsys.readouterr().out
    assert out == "record results/r.json\n  acc = 0.123457\n  n = 3\n  name = vit\n  per.a = 1.5\n"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="noise\n" + out + "after\n")]
    assert ex.printed_record(nb) == ("results/r.json", {"acc": "0.123457", "n": "3", "name": "vit", "per.a": "1.5"})


def test_stale_modules_name_the_changed_file(tmp_path):
    path = _executed(tmp_path, code="import vit_helpers as vh\nfrom vitkit import records")
    nb = nbformat.read(path, as_version=4)
    files = ex.imported_modules(nb)
    assert {"vit_helpers.py", "vitkit/__init__.py", "vitkit/records.py", "vitkit/runtime.py",
            "vitkit/checks.py"} <= set(files) and "vitkit/train.py" not in files
    hashes = ex.module_hashes(files)
    nb.metadata[ex.STAMP_KEY]["modules"] = {**hashes, "vitkit/records.py": "0" * 16}
    nbformat.write(nb, path)
    assert ex.stale_modules(path) == ["vitkit/records.py"]


def test_clean_drops_timings_widget_state_and_injected_parameters():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("A = 1"), nbformat.v4.new_code_cell("A = 2")])
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    nb.cells[0].metadata.update(papermill={"duration": 1.0}, execution={"iopub.status.busy": "2026"})
    nb.metadata.update(papermill={"input_path": "/abs/path"}, widgets={"state": {}})
    ex.clean(nb)
    assert [c.source for c in nb.cells] == ["A = 1"] and nb.cells[0].metadata == {}
    assert "papermill" not in nb.metadata and "widgets" not in nb.metadata


def test_execute_runs_stamps_and_checks_a_notebook(tmp_path, monkeypatch):
    """The script end to end on a two-cell notebook: papermill runs it, the stored copy passes the guard."""
    pytest.importorskip("papermill")
    code = ("import json, pathlib\nfrom vitkit import records\n"
            "ck = pathlib.Path('checkpoints/runs/tiny-full.pt')\n"
            "assert not ck.exists(), 'a training cell would refuse an earlier run checkpoint'\n"
            "ck.parent.mkdir(parents=True, exist_ok=True); ck.write_text('a run')\n"
            "p = pathlib.Path('results/tiny-full.json'); p.parent.mkdir(exist_ok=True)\n"
            "p.write_text(json.dumps({'metrics': {'acc': 0.5}}))\nrecords.show_record(p)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Tiny"), nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports vitkit from the repository
    assert ex.execute(path, "data", root=tmp_path) == []
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[0].id == ex.STAMP_CELL and "results/tiny-full.json" in stored.cells[0].source
    assert stored.metadata[ex.STAMP_KEY]["results"] == "results/tiny-full.json"
    assert "papermill" not in stored.metadata and "execution" not in stored.cells[2].metadata
    assert ex.execute(path, "data", root=tmp_path) == []  # again, with no manual deletion in between
    assert (tmp_path / "checkpoints" / "runs" / "previous" / "tiny-full.pt").read_text() == "a run"


# ---- words follow numbers -----------------------------------------------------------------------------------

import notebook_numbers as nn  # noqa: E402


def _prose(*sources):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(s) for s in sources])


@pytest.mark.parametrize("text, token", [
    ("ours reached 82.85 % on test", "82.85 %"), ("an offset of 3.5 px", "3.5 px"), ("17.5x the FLOPs", "17.5x"),
    ("it took 25 min", "25 min"), ("about 1.821 GFLOP", "1.821 GFLOP"), ("within 160 TFLOP", "160 TFLOP"),
    ("a positive AUC of 37.20", "AUC of 37.20"), ("ahead by 3.2 points", "3.2 points"), ("in 30 s", "30 s"),
    ("at 32x32 pixels", "32x32"), ("96.84%", "96.84%"), ("trains at 631 img/s", "631 img/s"),
    ("1,311 images/s on two threads", "1,311 images/s"),
])
def test_a_measured_number_typed_into_prose_is_caught_with_the_fix(text, token):
    (found,) = nn.typed_numbers(_prose(f"Some words: {text}."), "demo.ipynb", {})
    assert repr(token) in found and "render it from the record" in found and "allowed_prose_numbers.toml" in found


def test_numbers_without_units_names_and_the_run_stamp_are_not_measurements():
    nb = _prose("CIFAR-10 with a ViT-B/16, 6 blocks, lr 1e-3, std 0.02, 64 x 8 accumulated, 4xlarge.",
                "`16 % 4` in code is an expression.")  # the second is caught: inline code is prose too
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("*stored from a run of 25 min*"))
    nb.cells[0].id = nn.STAMP_CELL
    assert [f.split("'")[1] for f in nn.typed_numbers(nb, "demo.ipynb", {})] == ["16 %"]


def test_the_whitelist_allows_its_entries_and_flags_stale_or_unexplained_ones():
    nb = _prose("16x16 patches, as the paper. The original reported 74.72 %.")
    allowed = {"demo.ipynb": {"16x16": "the ViT paper's patch size", "74.72 %": "the original's README"}}
    assert nn.typed_numbers(nb, "demo.ipynb", allowed) == []
    assert nn.typed_numbers(nb, "other.ipynb", allowed)  # entries hold for their own notebook only
    allowed["demo.ipynb"].update({"99 %": "gone from the prose", "74.72 %": " "})
    found = sorted(nn.typed_numbers(nb, "demo.ipynb", allowed))
    assert len(found) == 2 and "'74.72 %' without a reason" in found[0] and "'99 %', which its prose no longer holds" in found[1]


def test_the_whitelist_file_parses_and_names_only_notebooks_the_readme_and_docs_pages():
    allowed = nn.load_allowed()
    pages = {p.relative_to(ex.ROOT).as_posix() for p in (ex.ROOT / "docs").glob("*.md")}
    assert set(allowed) <= {*ex.NOTEBOOKS, "README.md", *pages}
    assert all(isinstance(r, str) and r.strip() for entries in allowed.values() for r in entries.values())


def _rendered(markdown: str):
    cell = nbformat.v4.new_code_cell("display(Markdown(text))")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": markdown, "text/plain": "<md>"})]
    return nbformat.v4.new_notebook(cells=[cell])


RECORD = {"metrics": {"test_acc": 0.53784, "diff": -0.0318, "params": 1995402, "gflop": 1.8213, "tiny": 5.066e-07,
                      "curve": [0.25, 0.5]}, "config": {"seeds": 3}, "wall_time_s": 1471.6}


@pytest.mark.parametrize("markdown", [
    "HF reached **53.78 %** (ours 50 %)", "3.2 points apart", "1,995,402 parameters over 3 seeds",
    "1.82x the FLOPs", "a curve point of 0.25; CIFAR-10, ViT-B/16, in21k, top-5", "1471.6 s in all",
    "Parts 4 and 5 did not run; part 7 neither", "they agree to 5.1e-07", "the end. 3 seeds",
])
def test_rendered_numbers_that_the_record_holds_pass(markdown):
    assert nn.unbacked_numbers(_rendered(markdown), "demo.ipynb", RECORD, "r.json") == []


@pytest.mark.parametrize("markdown, number", [
    ("HF reached 53.79 %", "53.79"), ("within 160 TFLOP", "160"), ("2.5x the FLOPs", "2.5"), ("4 seeds", "4"),
    ("7 parts ran", "7"), ("agree to 5.2e-07", "5.2e-07"),
])
def test_a_rendered_number_no_record_value_equals_is_caught(markdown, number):
    (found,) = nn.unbacked_numbers(_rendered(markdown), "demo.ipynb", RECORD, "r.json")
    assert f"renders {number} in Markdown" in found and "r.json" in found


def test_the_stored_notebooks_prose_and_rendered_numbers_follow_their_records():
    """Already part of problems(); said here once more by name, for a reader looking for the rule."""
    found = [p for n in ex.NOTEBOOKS for p in ex.problems(ROOT / n) if "Markdown" in p or "prose" in p]
    assert not found, "\n".join(found)


def test_the_stamp_cell_says_when_the_run_came_from_uncommitted_code():
    stamp = {"commit": "0123456789abcdef+changes", "results": "results/demo-full.json", "hardware": {"cpu": "test"},
             "date": "2026-12-02 00:00:00", "wall_time_min": 1.0}
    assert "commit `0123456789+changes`" in ex._stamp_cell(stamp, "demo.ipynb").source
    stamp["commit"] = "0123456789abcdef"
    assert "commit `0123456789`," in ex._stamp_cell(stamp, "demo.ipynb").source
