"""The layout the README promises: vit_helpers.py is the small file a user copies (torch only at import, at most
1,000 lines, never importing the harness); vitkit/ is a package without import circles, small modules and small
functions; the README's "which file to copy" sets work alone; old names say where they went."""
import ast
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vit_helpers as vh
from conftest import ROOT

HARNESS = sorted((ROOT / "vitkit").glob("*.py"))


def _imports(path) -> set[str]:
    """Top-level module names imported anywhere in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "vitkit":
                names |= {f"vitkit.{a.name}" for a in node.names}
    return names


def test_vit_helpers_is_small_and_never_imports_the_harness():
    lines = (ROOT / "vit_helpers.py").read_text().count("\n")
    assert lines <= 1000, f"vit_helpers.py has {lines} lines; move what does not fit into vitkit/"
    assert not {m for m in _imports(ROOT / "vit_helpers.py") if m.split(".")[0] == "vitkit"}


def test_vit_helpers_imports_nothing_beyond_torch():
    code = textwrap.dedent("""
        import sys
        import torch
        before = set(sys.modules)
        import vit_helpers
        print(sorted(set(sys.modules) - before - {"vit_helpers"}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing vit_helpers also imported {out.strip()}"


def test_harness_has_no_import_circle():
    graph = {p.stem: {m.split(".")[1] for m in _imports(p) if m.startswith("vitkit.")} for p in HARNESS
             if p.stem != "__init__"}
    done, visiting = set(), []

    def visit(module):
        if module in visiting:
            raise AssertionError("import circle: " + " -> ".join(visiting[visiting.index(module):] + [module]))
        if module in done:
            return
        visiting.append(module)
        for dep in graph.get(module, ()):
            visit(dep)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert graph["checks"] == set() and "train" not in graph["data"]  # the bottom of the graph stays the bottom
    # the order vitkit/__init__.py lists the modules in: each imports only modules listed before it
    order = re.findall(r"``(\w+)``(?:\s+\(|\.)", (ROOT / "vitkit" / "__init__.py").read_text().split("Modules,", 1)[1])
    assert sorted(order) == sorted(graph), f"vitkit/__init__.py lists {order}, the package has {sorted(graph)}"
    for i, module in enumerate(order):
        assert graph[module] <= set(order[:i]), f"{module} imports {graph[module] - set(order[:i])}, listed after it"


@pytest.mark.parametrize("path", HARNESS, ids=lambda p: p.name)
def test_harness_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 500, f"{path.name} has {source.count(chr(10))} lines; split it by concern"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.name}: {node.name} has {length} lines; split it into named steps"


def test_the_training_loop_reads_on_one_screen():
    """fit's loop is one function of at most 60 lines, its optimizer step inside it."""
    tree = ast.parse((ROOT / "vitkit" / "train.py").read_text())
    loop = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_loop")
    source = ast.get_source_segment((ROOT / "vitkit" / "train.py").read_text(), loop)
    assert loop.end_lineno - loop.lineno + 1 <= 60
    for piece in ("autocast", "mixed_loss", "backward()", "unscale_", "clip_grad_norm_", "scaler.step", '["lr"]'):
        assert piece in source, piece


def _copy_sets() -> dict[str, list[str]]:
    """The file sets of the README's "Which file to copy" bullets, read from the README itself."""
    section = (ROOT / "README.md").read_text().split("## Which file to copy", 1)[1].split("\n## ", 1)[0]
    sets = {}
    for title, text in re.findall(r"^- \*\*(.+?):\*\*(.*?)(?=^- |^$)", section, re.M | re.S):
        text = " ".join(text.split())
        files = ["vit_helpers.py"] if "`vit_helpers.py`" in text else []
        if "whole `vitkit/` folder" in text:
            files.append("vitkit")
        elif "folder's" in text:
            named = text.split("folder's", 1)[1].split("(", 1)[0]
            files += [f"vitkit/{name}" for name in re.findall(r"`([\w.]+\.py)`", named)]
        sets[title] = files
    return sets


SNIPPETS = {  # what each set must be able to do alone
    "The model and attention rollout only": """
        import torch, vit_helpers as vh
        model, meta = vh.load_model(WEIGHTS)
        logits, attentions = model(torch.zeros(2, 1, 28, 28), return_attentions=True)
        assert vh.attention_rollout(attentions).shape == (2, 7, 7)
    """,
    "The training loop too": """
        import torch, vit_helpers as vh
        from vitkit import train
        x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 2, (32,))
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        model = vh.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=2, dim=16, depth=1,
                                     heads=2, mlp_dim=16)
        hist = train.fit(model, loader, loader, epochs=1, precision="fp32", device="cpu", progress=False, verbose=False)
        assert hist.total_steps == 4 and train.evaluate(model, loader)["n"] == 32
    """,
    "Everything the notebooks use": """
        import vit_helpers as vh
        from vitkit import data, explain, plots, recipes, records, runtime, train
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("title", list(SNIPPETS))
def test_the_readmes_copy_sets_work_alone(title, tmp_path):
    sets = _copy_sets()
    assert title in sets, f"README's 'Which file to copy' lost the bullet {title!r}: {list(sets)}"
    for name in sets[title]:
        src, dst = ROOT / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    code = f"WEIGHTS = {str(ROOT / 'weights' / 'mnist-fast.safetensors')!r}\n" + textwrap.dedent(SNIPPETS[title])
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert proc.returncode == 0, f"{title}: {sets[title]} alone fail:\n{proc.stderr[-2000:]}"


@pytest.mark.slow
def test_pip_install_editable_makes_both_importable_from_any_folder(tmp_path):
    """`pip install -e .` (no downloads: the running environment's packages are reused through a .pth file)."""
    import site
    import venv

    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e",
                              str(ROOT)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    probe = subprocess.run([str(python), "-c", "import vit_helpers, vitkit.train; print(vit_helpers.__file__); "
                            "print(vitkit.train.__file__)"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert [Path(p).resolve() for p in probe.stdout.split()] == [ROOT / "vit_helpers.py", ROOT / "vitkit" / "train.py"]


@pytest.mark.parametrize("name, most", [("time_budget_s", 3), ("lr", 3)])
def test_a_setting_followed_from_fit_passes_through_at_most_three_modules(name, most):
    """A trace of a smoke run: the functions the run calls that read ``name`` (as an attribute or an argument) lie in
    at most three modules (the generic ones that handle every field alike, FitConfig.identity and the checkpoint's
    identity, are not reading it)."""
    import sys as _sys

    from conftest import loader, quadrant_data, tiny_vit
    from vitkit import train

    touched: list[str] = []

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and name in code.co_names + code.co_varnames:
            path = Path(code.co_filename)
            # the project's own code: not the tests, nor a virtual environment inside the checkout (the README's .venv)
            if path.is_relative_to(ROOT) and "tests" not in path.parts and "site-packages" not in path.parts:
                module = path.relative_to(ROOT).as_posix()
                if not touched or touched[-1] != module:
                    touched.append(module)

    _sys.setprofile(profile)
    try:
        train.fit(tiny_vit(), loader(quadrant_data(16, 0)), epochs=1, lr=1e-3, time_budget_s=30.0, device="cpu",
                  precision="fp32", compile=False, progress=False, verbose=False)
    finally:
        _sys.setprofile(None)
    assert len(set(touched)) <= most, touched


def _api_rows():
    """docs/api.md's two-column table rows, as (left, right) cell texts."""
    for line in (ROOT / "docs" / "api.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 2 and not set(cells[0]) <= set("-"):
            yield cells


def _code_names(path) -> set[str]:
    """The names ``path``'s code uses (attributes, parameters, locals), comments and strings left out."""
    import io
    import tokenize

    tokens = tokenize.generate_tokens(io.StringIO(Path(path).read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def test_every_name_docs_api_lists_for_a_module_exists_there():
    import importlib

    missing, checked = [], 0
    for left, right in _api_rows():
        # the module table: each name is the module's, or one its code uses (a parameter, a field, an attribute);
        # vit_helpers.py has a row per part
        listed = re.fullmatch(r"`(vitkit\.\w+)`|`(vit_helpers)\.py`: .*", left)
        moved = re.fullmatch(r"`(vitkit\.\w+)` \(same names\)", right)  # the table of moved names
        renamed = re.fullmatch(r"`(vitkit\.\w+)\.(\w+)(?:\(\))?`.*", right)
        if listed:
            module = importlib.import_module(listed.group(1) or listed.group(2))
            in_code = _code_names(module.__file__)
            names = [re.sub(r"\(.*", "", item).lstrip(".") for item in re.findall(r"`([^`]+)`", right)]
            for name in (n for n in names if re.fullmatch(r"[A-Za-z_]\w+", n)):
                checked += 1
                if not hasattr(module, name) and name not in in_code:
                    missing.append(f"{module.__name__}: {name}")
        elif moved or renamed:
            module = importlib.import_module((moved or renamed).group(1))
            for name in re.findall(r"`(\w+)`", left) if moved else [renamed.group(2)]:
                checked += 1
                if not hasattr(module, name):
                    missing.append(f"{module.__name__}: {name} (moved there, says docs/api.md)")
    assert checked > 150 and not missing, missing
