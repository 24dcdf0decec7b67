"""Check the attention explorer in a real JupyterLab, in headless Chromium: run a two-cell notebook that opens
the explorer on the shipped MNIST model, click a patch on the figure, and check that the widget's row/column
readouts follow the click; saves a screenshot of the explorer after the click.

    pip install playwright                 # the Python driver only; the browser comes from the system:
    apt-get install chromium               # (Debian/Ubuntu; or pass --chromium PATH)
    python scripts/check_explorer_jupyterlab.py --data-root ../shared/data --out images/explorer-jupyterlab.png

Not part of the test suite (it needs a browser); tests/test_explorer.py drives the same widget from Python.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

SETUP = """import torch
import vit_helpers as vh
from vitkit import data, recipes
from vitkit.explorer import AttentionExplorer

model, meta = vh.load_model({weights!r})
loaders = data.mnist_loaders({data_root!r}, **{{**recipes.get_recipe("mnist-fast")["data"], "test_limit": 64}})
images, labels = next(iter(loaders.test))"""
EXPLORER = """explorer = AttentionExplorer(model, images[:12], class_names=[str(d) for d in range(10)],
                             mean=loaders.test.dataset.mean, std=loaders.test.dataset.std)
explorer"""


def _notebook(folder: Path, data_root: str) -> None:
    setup = SETUP.format(weights=str(ROOT / "weights" / "mnist-fast.safetensors"), data_root=data_root)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(EXPLORER)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "explorer.ipynb")


def _drive(port: int, chromium: str, out: Path) -> tuple[list[str], list[str]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        time.sleep(5)  # the kernel starts
        page.click("text=Run", timeout=30_000)
        page.click("text=Run All Cells", timeout=30_000)
        canvas = page.wait_for_selector(".jupyter-matplotlib-canvas-div canvas", timeout=300_000)
        time.sleep(3)
        readouts = lambda: [e.inner_text() for e in page.query_selector_all(".widget-readout")]  # noqa: E731
        before = readouts()
        output = page.locator(".jp-OutputArea-output").last
        box = canvas.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.16, box["y"] + box["height"] * 0.35)  # on the digit's image
        time.sleep(3)
        after = readouts()
        output.screenshot(path=str(out))
        browser.close()
    return before, after


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, default=ROOT / "images" / "explorer-jupyterlab.png")
    ap.add_argument("--port", type=int, default=8899)
    args = ap.parse_args()
    data_root = str(Path(args.data_root).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        _notebook(Path(tmp), data_root)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        lab = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={args.port}",
                                "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={tmp}",
                                "--allow-root"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(10)
            before, after = _drive(args.port, args.chromium, args.out)
        finally:
            lab.terminate()
            lab.wait(30)
    print(f"readouts before the click: {before}\nreadouts after the click:  {after}\nscreenshot: {args.out}")
    # readouts: image, layer, discard, row, column; the click on the image's upper left moves row and column
    ok = len(before) == len(after) == 5 and before[3:] != after[3:]
    print("the click selected a patch" if ok else "FAILED: the click did not change the query patch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
