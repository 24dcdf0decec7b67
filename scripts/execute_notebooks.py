"""Run notebooks in full and store them executed, stamped so that stale outputs cannot land.

    python scripts/execute_notebooks.py VisionTransformer.ipynb [more.ipynb ...] [--data-root ../shared/data]
    python scripts/execute_notebooks.py --all        # every notebook, one after the other
    python scripts/execute_notebooks.py --stale      # which stored outputs no longer match the code (no run)

A run executes the notebook top to bottom through papermill at its ``parameters`` cell's defaults (the data root
comes from ``VIT_DATA_ROOT``; nothing is injected, so the stored code is the code that ran), with progress bars
off, then writes it back: papermill's per-cell timing and the widget state stripped, and in the notebook's
metadata a **run stamp**: a hash of its code cells, hashes of the project modules it imports (directly or through
them), the commit, the results file the run wrote (and its hash), the hardware and the date. The first cell says
which commit the outputs come from. ``tests/test_notebook_outputs.py`` fails when a stored notebook's code no
longer matches its stamp, when an output holds an error or a traceback, a machine path or a timestamp, or when the
numbers it printed (:func:`vitkit.records.show_record`) disagree with its results file. A change to an imported
module only warns (``--stale`` lists those notebooks): re-run them before a change that alters their numbers lands.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from notebook_numbers import STAMP_CELL, load_allowed, typed_numbers, unbacked_numbers  # noqa: E402
from smoke_env import NOTEBOOKS  # noqa: E402

STAMP_KEY = "vit_run"  # notebook metadata key of the run stamp
MAX_OUTPUT_BYTES = 10_000_000  # all notebooks' stored outputs together: the repository stays light to clone
MAX_IMAGE_BYTES = 300_000  # one stored figure (PNG bytes): GitHub renders the notebook quickly
_MACHINE_PATH = re.compile(r"(?<![\w.~-])(/(?:home|root|work|Users|tmp|mnt|private|opt|srv|content)/|[A-Za-z]:\\)")
_TIMESTAMP = re.compile(r"\b\d{4}-\d\d-\d\d[ T]\d\d:\d\d|^[IWE]\d{4} \d\d:\d\d:\d\d", re.M)
_RECORD_LINE = re.compile(r"^record (\S+\.json)$", re.M)
_METRIC_LINE = re.compile(r"^  (\S.*?) = (.*)$")  # keys may hold spaces ("localization.raw attention.box_accuracy")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def code_hash(nb) -> str:
    """Hash of the notebook's code cells (sources, trailing whitespace ignored); markdown does not count."""
    code = [c.source.rstrip() for c in nb.cells if c.cell_type == "code"]
    return _sha("\n\0\n".join(code).encode())


def _project_imports(source: str) -> set[str]:
    """The project modules (``vit_helpers``, ``vitkit.<name>``) that Python source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("vit_helpers", "vitkit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vitkit":
                found |= {"vitkit"} | {f"vitkit.{a.name}" for a in node.names}
            elif node.module.split(".")[0] in ("vit_helpers", "vitkit"):
                found.add(node.module)
    return found


def _module_file(module: str) -> Path:
    parts = module.split(".")
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(nb) -> list[str]:
    """Files of the project modules the notebook imports, directly or through them (relative paths, sorted)."""
    source = "\n".join(_without_magics(c.source) for c in nb.cells if c.cell_type == "code")
    todo, seen = _project_imports(source), set()
    while todo:
        module = todo.pop()
        if module in seen or not _module_file(module).is_file():
            continue
        seen.add(module)
        if module.startswith("vitkit."):
            todo.add("vitkit")  # importing vitkit.x runs vitkit/__init__.py first
        todo |= _project_imports(_module_file(module).read_text()) - seen
    return sorted(_module_file(m).relative_to(ROOT).as_posix() for m in seen)


def _without_magics(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def module_hashes(files: list[str]) -> dict[str, str]:
    return {f: _sha((ROOT / f).read_bytes()) for f in files}


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _output_text(output) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join(output.traceback)
    return "\n".join(v if isinstance(v, str) else json.dumps(v) for k, v in output.get("data", {}).items()
                     if k.startswith("text/") or k.endswith("json"))


def stream_text(nb) -> str:
    return "".join(o.text for o in _outputs(nb) if o.output_type == "stream" and o.name == "stdout")


def has_outputs(nb) -> bool:
    return any(True for _ in _outputs(nb)) or any(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


def printed_record(nb) -> tuple[str | None, dict[str, str]]:
    """The results file a notebook's :func:`show_record` output names, and the ``name = value`` lines under it."""
    text = stream_text(nb)
    found = list(_RECORD_LINE.finditer(text))
    if not found:
        return None, {}
    values = {}
    for line in text[found[-1].end():].splitlines()[1:]:
        m = _METRIC_LINE.match(line)
        if not m:
            break
        values[m.group(1)] = m.group(2)
    return found[-1].group(1), values


def _same(printed: str, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return printed == str(value)
    try:
        return math.isclose(float(printed), float(value), rel_tol=1e-5, abs_tol=1e-12)
    except ValueError:
        return False


def output_bytes(nb) -> int:
    return sum(len(json.dumps(o)) for o in _outputs(nb))


def problems(path: Path, root: Path = ROOT, allowed: dict | None = None) -> list[str]:
    """Why a stored notebook cannot be trusted (empty when it can): measured numbers typed into its prose (``allowed``:
    the whitelist, by default tests/allowed_prose_numbers.toml), and, when it has outputs, every way they can be stale.
    ``root``: the folder the notebook ran in (its results file is relative to it)."""
    nb = nbformat.read(path, as_version=4)
    name, rerun = path.name, f"python scripts/execute_notebooks.py {path.name}"
    typed = typed_numbers(nb, name, load_allowed() if allowed is None else allowed)
    if not has_outputs(nb):
        stamped = STAMP_KEY in nb.metadata
        return typed + ([f"{name}: a run stamp but no outputs; re-run: {rerun}"] if stamped else [])
    stamp = nb.metadata.get(STAMP_KEY)
    if not stamp:
        return typed + [f"{name}: stored outputs without a run stamp, so nothing says which code made them; re-run it "
                        f"with `{rerun}` or strip its outputs (jupyter nbconvert --clear-output --inplace {name})"]
    found = typed
    if stamp["code_hash"] != code_hash(nb):
        found.append(f"{name}: its code cells changed since its outputs were recorded (stamp {stamp['code_hash']}, "
                     f"now {code_hash(nb)}); re-run: {rerun}")
    first = nb.cells[0] if nb.cells else None
    if first is None or first.get("id") != STAMP_CELL or stamp["commit"][:10] not in first.source:
        found.append(f"{name}: the first cell must say which commit the outputs come from; re-run: {rerun}")
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for o in cell.get("outputs", []):
            text = _output_text(o)
            if o.output_type == "error" or "Traceback (most recent call last)" in text:
                found.append(f"{name}: code cell {i + 1} stored an error or a traceback")
            if path_seen := _MACHINE_PATH.search(text):
                found.append(f"{name}: code cell {i + 1} shows a path of the machine ({path_seen.group(0)!r}...): "
                             "print paths relative to the repository")
            png = o.get("data", {}).get("image/png")
            if png and len(png) * 3 // 4 > MAX_IMAGE_BYTES:
                found.append(f"{name}: code cell {i + 1} stores a {len(png) * 3 // 4 // 1000} KB figure (limit "
                             f"{MAX_IMAGE_BYTES // 1000} KB): fewer panels or a lower dpi")
            if o.get("data", {}).get("text/plain", "").startswith("Canvas("):
                found.append(f"{name}: code cell {i + 1} stores a figure as an ipympl Canvas widget: draw it with the "
                             "inline backend, so that it is stored as a PNG")
            if time_seen := _TIMESTAMP.search(text):
                found.append(f"{name}: code cell {i + 1} shows a timestamp ({time_seen.group(0)!r}), "
                             "which changes every run")
    found += _record_problems(name, nb, stamp, rerun, root)
    return found


def _record_problems(name: str, nb, stamp: dict, rerun: str, root: Path) -> list[str]:
    from vitkit.records import flat_metrics

    results, printed = printed_record(nb)
    if results is None:
        return [f"{name}: no `record results/....json` line in its outputs (end it with records.show_record)"]
    file = root / results
    if results != stamp["results"] or not file.is_file():
        return [f"{name}: its outputs name {results}, its stamp {stamp['results']}; that file must exist and be "
                f"the one the run wrote; re-run: {rerun}"]
    if _sha(file.read_bytes()) != stamp["results_hash"]:
        return [f"{name}: {results} changed after the run that made the stored outputs; restore it "
                f"(git checkout {stamp['commit'][:10]} -- {results}) or re-run: {rerun}"]
    record = json.loads(file.read_text())
    metrics = flat_metrics(record["metrics"])
    return [f"{name}: its outputs say {key} = {value}, its record {results} says {metrics.get(key)!r}"
            for key, value in printed.items() if key not in metrics or not _same(value, metrics[key])] + \
        unbacked_numbers(nb, name, record, results)


def stale_modules(path: Path) -> list[str]:
    """Imported project modules that changed since the stored run (a warning: re-run before numbers change)."""
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get(STAMP_KEY)
    if not stamp:
        return []
    now = module_hashes(imported_modules(nb))
    return sorted(f for f in set(now) | set(stamp["modules"]) if now.get(f) != stamp["modules"].get(f))


def clean(nb) -> None:
    """Drop what papermill and nbclient add that changes every run: timings, widget state, the run's parameters."""
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)


def _stamp_cell(stamp: dict, name: str) -> nbformat.NotebookNode:
    hw = stamp["hardware"]
    threads = hw.get("torch_threads")
    where = hw.get("gpu") or f"{hw.get('cpu')} ({threads} thread{'' if threads == 1 else 's'})"
    commit = stamp["commit"][:10] + ("+changes" if stamp["commit"].endswith("+changes") else "")
    text = (f"*Outputs stored from a full run at its default parameters: commit `{commit}`, "
            f"{stamp['date'][:10]}, {where}, {stamp['wall_time_min']:.0f} min; record `{stamp['results']}`. "
            f"Re-run: `python scripts/execute_notebooks.py {name}`.*")
    cell = nbformat.v4.new_markdown_cell(text)
    cell.id = STAMP_CELL
    return cell


@contextlib.contextmanager
def _environ(**values: str):
    """Environment variables for the kernel papermill starts (it inherits ours), restored afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def execute(path: Path, data_root: str, timeout_s: int | None = None, root: Path = ROOT) -> list[str]:
    """Run the notebook at ``path`` in full (in folder ``root``), store it executed and stamped; returns its
    problems (empty: clean)."""
    import papermill

    from vitkit import checkpoint as ckpt
    from vitkit.records import code_commit

    name = path.name
    commit = code_commit() or "unknown"  # the code as it was when the run started
    moved = ckpt.set_aside(root / "checkpoints" / "runs", f"{path.stem}-")  # a full run starts afresh
    if moved:
        print(f"{name}: moved {moved} earlier run checkpoint file(s) to checkpoints/runs/previous/")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, _environ(VIT_DATA_ROOT=data_root, TQDM_DISABLE="1", VIT_SMOKE="0"):
        out = Path(tmp) / name
        papermill.execute_notebook(str(path), str(out), cwd=str(root), progress_bar=False, log_output=True,
                                   execution_timeout=timeout_s, request_save_on_cell_execute=False)
        nb = nbformat.read(out, as_version=4)
    clean(nb)
    nb.cells = [c for c in nb.cells if c.get("id") != STAMP_CELL]
    results, _ = printed_record(nb)
    if results is None or not (root / results).is_file():
        raise SystemExit(f"{name}: the run printed no `record results/....json` line (records.show_record)")
    record = json.loads((root / results).read_text())
    stamp = {"code_hash": code_hash(nb), "modules": module_hashes(imported_modules(nb)),
             "commit": commit, "results": results,
             "results_hash": _sha((root / results).read_bytes()),
             "hardware": {k: v for k, v in record.get("hardware", {}).items() if k != "hostname"},
             "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_time_min": round((time.time() - started) / 60, 1),
             "command": f"python scripts/execute_notebooks.py {name} --data-root {data_root}"}
    nb.metadata[STAMP_KEY] = stamp
    nb.cells.insert(0, _stamp_cell(stamp, name))
    nbformat.write(nb, path)
    return problems(path, root)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook file names, e.g. VisionTransformer.ipynb")
    ap.add_argument("--all", action="store_true", help="run every notebook")
    ap.add_argument("--stale", action="store_true", help="only list stored outputs the code no longer matches")
    ap.add_argument("--data-root", default=os.environ.get("VIT_DATA_ROOT", "./data"),
                    help="data folder, relative to the repository (default: $VIT_DATA_ROOT or ./data)")
    ap.add_argument("--timeout-min", type=float, default=None, help="per-cell limit (default: none)")
    args = ap.parse_args(argv)
    names = NOTEBOOKS if args.all or args.stale and not args.notebooks else args.notebooks
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown or not names:
        ap.error(f"name notebooks to run ({', '.join(NOTEBOOKS)}) or pass --all; unknown: {unknown}")
    if Path(args.data_root).is_absolute():
        ap.error("--data-root: pass it relative to the repository (e.g. ../shared/data), so that no machine path "
                 "ends up in the stored outputs")
    found = []
    for name in names:
        if not args.stale:
            print(f"== {name}: running in full (data {args.data_root})", flush=True)
            found += execute(ROOT / name, args.data_root, None if args.timeout_min is None else int(args.timeout_min * 60))
        found += [] if not args.stale else problems(ROOT / name)
    for name in NOTEBOOKS:
        changed = stale_modules(ROOT / name)
        if changed:
            print(f"warning: {name}'s stored outputs predate changes to {', '.join(changed)}; re-run it before a "
                  f"change that alters its numbers lands: python scripts/execute_notebooks.py {name}")
    for p in found:
        print("problem:", p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
