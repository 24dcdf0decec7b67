"""Every notebook runs top to bottom in smoke mode, offline, and is committed without outputs or stamped.

Data: ../shared/data when present, otherwise small generated files in the real formats. Model ids point at tiny
random ViTs saved here with save_pretrained (with an image processor); photos come from ../shared/data/photos
or are generated.
"""
import ast
import importlib
import json
import sys

import nbformat
import pytest

import vit_helpers as vh
from vitkit import explain
from conftest import ROOT, SHARED_DATA

HARNESS = [importlib.import_module(f"vitkit.{p.stem}") for p in (ROOT / "vitkit").glob("*.py") if p.stem != "__init__"]
sys.path.insert(0, str(ROOT / "scripts"))
import notebook_numbers as nn  # noqa: E402
from smoke_env import NOTEBOOKS, make_smoke_env, run_notebook  # noqa: E402


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stripped_or_stamped_and_parametrised(name):
    nb = nbformat.read(ROOT / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if "vit_run" not in nb.metadata:  # outputs only from a stamped full run (tests/test_notebook_outputs.py)
        for cell in code:
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}: commit it without outputs, or executed by scripts/execute_notebooks.py"
    assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged 'parameters'"
    for knob in ("SMOKE", "DATA_ROOT", "SEED", "DEVICE", "OUTPUT_DIR", "CHECKPOINT_DIR", "RESUME"):
        assert f"{knob} =" in code[0].source
    assert "import vit_helpers as vh" in "".join(c.source for c in code)
    defined = {node.name for c in code for node in ast.walk(ast.parse(c.source))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    shared = set(dir(vh)).union(*(m.__all__ for m in HARNESS))
    assert not defined & shared, f"{name} redefines {defined & shared} from vit_helpers or vitkit"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Data root, tiny local HF models and photos for offline smoke runs."""
    pytest.importorskip("transformers")
    return make_smoke_env(tmp_path_factory.mktemp("nb"), SHARED_DATA)


def _run(name, env, **parameters):
    pytest.importorskip("papermill")
    return run_notebook(name, env, **parameters)


def _record(env, stem):
    return json.loads((env["out"] / "results" / f"{stem}-smoke.json").read_text())


@pytest.mark.slow
def test_vision_transformer_notebook(env):
    nb = _run("VisionTransformer.ipynb", env)
    record = _record(env, "VisionTransformer")
    # The ViT written out cell by cell computes what vit_helpers.VisionTransformer computes (same weights).
    assert record["metrics"]["notebook_vs_helper_max_abs_diff"] < 1e-4
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0 and record["metrics"]["epochs_run"] == 1
    assert record["config"]["recipe"] == "fast" and record["hardware"]["cpu_count"] >= 1  # "auto" on a CPU
    for fig in ("cifar10-patches", "cifar10-curves", "cifar10-confusion", "cifar10-misclassified",
                "cifar10-position-similarity"):
        assert (env["out"] / "images" / "smoke" / f"{fig}.png").stat().st_size > 1000
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # The summary is rendered from the record: per-class accuracy, the most frequent confusion, the hardest class.
    metrics = record["metrics"]
    assert len(metrics["test_acc_per_class"]) == 10 and metrics["top_confusion"]["count"] >= 1
    summary = "".join(text for _, text in nn.markdown_outputs(nb))
    assert "most frequent mistake" in summary and metrics["top_confusion"]["true"] in summary
    assert nn.unbacked_numbers(nb, "VisionTransformer.ipynb", record, "r") == []


def test_vision_transformer_notebook_builds_the_model_itself():
    """The notebook defines the pieces (patchify, attention written out, block, model), not just imports them."""
    nb = nbformat.read(ROOT / "VisionTransformer.ipynb", as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    defined = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert {"patchify", "LinearPatchEmbedding", "Embeddings", "MultiHeadSelfAttention", "EncoderBlock",
            "ViT"} <= defined
    assert "softmax" in source and "scaled_dot_product_attention" in source  # written out, then checked


def _made_up_study(path):
    """A study record as scripts/inductive_bias_study.py writes it: 2 sizes x 5 variants x 2 seeds; the CNN 20 points
    ahead at 2,500 images and 5 at 10,000, cct-stem 10 points above the plain ViT at both, the rest within noise."""
    base = {2500: {"vit": 0.40, "cct-stem": 0.50, "spt-lsa": 0.405, "sincos": 0.41, "cnn": 0.60},
            10_000: {"vit": 0.60, "cct-stem": 0.70, "spt-lsa": 0.60, "sincos": 0.605, "cnn": 0.65}}
    runs = [{"variant": v, "size": size, "seed": seed, "test_acc": acc + (0.01 if seed else -0.01), "best_val_acc": acc,
             "val_acc": [acc - 0.2, acc - 0.05, acc, acc], "plateau_move_points": 0.0 if seed else 0.3,
             "wall_time_s": 180.0}
            for size, accs in base.items() for v, acc in accs.items() for seed in (0, 1)]
    path.write_text(json.dumps({"metrics": {"runs": runs}}))
    return path


@pytest.mark.slow
def test_inductive_bias_notebook(env, tmp_path):
    nb = _run("InductiveBias.ipynb", env, STUDY_RECORD=str(_made_up_study(tmp_path / "study.json")))
    record = _record(env, "InductiveBias")
    runs = record["metrics"]["runs"]
    assert [(r["size"], r["variant"]) for r in runs] == [(n, v) for n in (100, 200)
                                                         for v in ["vit", "cct-stem", "spt-lsa", "sincos", "cnn"]]
    for r in runs:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["epochs"] == len(r["val_acc"]) >= 1 and r["train_tflop"] > 0
    assert {r["variant"]: r["parameters_vs_plain_vit"] for r in runs}["vit"] == 1.0
    for fig in ("data-size", "curves", "rollout", "position-similarity"):
        assert (env["out"] / "images" / "smoke" / f"inductive-bias-{fig}.png").stat().st_size > 1000
    # The summary is the made-up study's, rendered from the notebook's own record: the gap narrows, cct-stem gains
    # beyond noise at both sizes (half the gap at 2,500, all of it at 10,000), sincos and spt-lsa within noise.
    summary = "".join(text for _, text in nn.markdown_outputs(nb))
    assert "The study: 20 runs, their wall times summing to 1.0 h." in summary
    assert "The CNN ahead of the plain ViT by 20.0 points" in summary
    assert "**The CNN's lead from 2,500 to 10,000 images** narrows by 15.0 points" in summary
    assert "as the hypothesis predicts" in summary
    assert "`cct-stem` ahead of the plain ViT by 10.0 points" in summary and "50 % of the CNN's lead" in summary
    assert "`sincos` and the plain ViT within noise" in summary
    assert "was +0.30 points, within the ±0.5 points asked" in summary
    assert nn.unbacked_numbers(nb, "InductiveBias.ipynb", record, "r") == []


@pytest.mark.slow
def test_visualize_attention_notebook(env):
    nb = _run("VisualizeAttentionMap.ipynb", env)
    record = _record(env, "VisualizeAttentionMap")
    assert record["config"]["data"]["invert"] is True
    faith = record["metrics"]["faithfulness"]
    vs_random = record["metrics"]["faithfulness_vs_random"]  # paired bootstrap over the test digits
    assert set(vs_random) == set(explain.EXPLAINERS) - {"random"}
    assert all(set(v) == {"positive_auc", "negative_auc", "stroke_mass"} and
               v["positive_auc"]["low"] <= v["positive_auc"]["difference"] <= v["positive_auc"]["high"]
               for v in vs_random.values())
    assert sorted(record["metrics"]["rollout_by_depth"], key=int) == [str(k) for k in range(1, 7)]  # shipped: 6 layers
    (summary,) = [t for _, t in nn.markdown_outputs(nb)]
    assert "than random" in summary and nn.unbacked_numbers(nb, "VisualizeAttentionMap.ipynb", record, "r") == []
    assert set(faith) == set(explain.EXPLAINERS) and record["config"]["weights"] == "weights/mnist-fast.safetensors"
    assert all(len(f["positive_accuracy"]) == 10 and 0 <= f["stroke_mass"] <= 1 for f in faith.values())
    assert 0 < record["metrics"]["seconds_to_first_maps"] < record["wall_time_s"]
    if (ROOT / "weights" / "cifar10-cpu.safetensors").is_file():  # the same test on the shipped CIFAR-10 model
        cifar = record["metrics"]["faithfulness_cifar10"]
        assert set(cifar) == set(explain.EXPLAINERS) and record["config"]["n_faithful_cifar10"] == 32
        assert all(0 <= f["positive_auc"] <= 90 and len(f["negative_accuracy"]) == 10 for f in cifar.values())
        assert (env["out"] / "images" / "smoke" / "cifar10-explanations.png").stat().st_size > 1000
    for fig in ("mnist-rollout", "mnist-rollout-by-layer", "mnist-rollout-fusion", "mnist-raw-vs-rollout",
                "mnist-explanations", "mnist-faithfulness"):
        assert (env["out"] / "images" / "smoke" / f"{fig}.png").stat().st_size > 1000


@pytest.mark.slow
def test_imported_vision_transformer_notebook(env):
    _run("ImportedVisionTransformer.ipynb", env)
    metrics = _record(env, "ImportedVisionTransformer")["metrics"]
    assert max(metrics["equivalence_max_abs_diff"].values()) < 1e-4
    assert set(metrics["scratch_side_by_side"]) == {"ours (vit_helpers)", "HF ViTForImageClassification"}
    assert metrics["finetune"]["optimizer_steps"] == 2 and 0.0 <= metrics["finetune"]["test_acc"] <= 1.0
    assert len(metrics["imagenet_top5"]) == len(env["photos"])
    assert all(len(top5) == 5 for top5 in metrics["imagenet_top5"].values())
    assert len(metrics["explain_top2"]) == 2
    assert (env["out"] / "images" / "smoke" / "imagenet-top2-explained.png").stat().st_size > 1000


@pytest.mark.slow
def test_weakly_supervised_localization_notebook(env):
    nb = _run("WeaklySupervisedLocalization.ipynb", env)
    record = _record(env, "WeaklySupervisedLocalization")
    m = record["metrics"]
    for measure, pairs in m["ranking"].items():  # neighbours down the ranking, each with a paired bootstrap
        assert len(pairs) == len(m["localization"]) - 1 and all(p["low"] <= p["difference"] <= p["high"] for p in pairs)
        assert [m["localization"][p["first"]][measure] for p in pairs] == \
            sorted((m["localization"][p["first"]][measure] for p in pairs), reverse=True), measure
    assert nn.unbacked_numbers(nb, "WeaklySupervisedLocalization.ipynb", record, "r") == []
    assert any("Pointing game" in t for _, t in nn.markdown_outputs(nb))
    stems = {"patch", "conv", "conv-centred"}
    assert m["stem"] in stems and set(m["stem_val_acc"]) == stems
    assert set(m["localization"]) == set(explain.EXPLAINERS) | {"Grad-CAM (CNN)", "centre box (baseline)"}
    for method, s in m["localization"].items():
        assert 0 <= s["pointing_game"] <= 1 and 0 <= s["box_accuracy"] <= 1, method
    assert 0 < m["vit"]["train_tflop"] <= 0.3 and 0 < m["cnn"]["train_tflop"] <= 0.3  # the smoke budget
    assert record["config"]["clutter"]["canvas"] == 64 and record["config"]["clutter"]["fragments"] == 6
    for fig in ("localization-data", "localization-maps"):
        assert (env["out"] / "images" / "smoke" / f"{fig}.png").stat().st_size > 1000


@pytest.mark.slow
def test_imported_notebook_offline_skips_the_hub_parts_and_runs_the_rest(env):
    """Offline, with hub ids that are not local folders: parts 3-5 each say what they would download, the rest runs."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("huggingface.co is reachable here: this test is about running offline")
    except OSError:
        pass
    nb = _run("ImportedVisionTransformer.ipynb", env, PRETRAINED_ID="vit-kit-tests/not-downloaded",
              IMAGENET_ID="vit-kit-tests/not-downloaded-either", RUN_FINETUNE=True)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "skipped part 3 (fine-tuning): it would download vit-kit-tests/not-downloaded" in printed
    assert "skipped parts 4 and 5 (an ImageNet ViT on photos): it would download" in printed
    metrics = _record(env, "ImportedVisionTransformer")["metrics"]
    assert "finetune" not in metrics and "imagenet_top5" not in metrics and metrics["scratch_side_by_side"]


@pytest.mark.slow
def test_a_notebook_stopped_mid_training_continues_when_run_again_at_its_defaults(env):
    """Kernel interrupted in epoch 2 of 3 (as a closed tab or a Ctrl-C would), then the notebook run again with the
    same parameters, RESUME left at its default: it continues from epoch 1's checkpoint and finishes all 3 epochs."""
    import os
    import signal
    import threading
    import time

    pytest.importorskip("papermill")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from smoke_env import notebook_parameters, smoke_environ

    from vitkit import checkpoint as ckpt

    name = "VisualizeAttentionMap.ipynb"
    params = {"TRAIN": True, "EPOCHS": 3, "CIFAR10_WEIGHTS": None, "N_FAITHFUL": 16, "N_DIGITS": 4}
    smoke_environ()
    runs = env["out"] / "checkpoints" / "runs"
    ckpt.set_aside(runs, "VisualizeAttentionMap-")
    saved = runs / "VisualizeAttentionMap-fast-smoke.pt"
    nb = nbformat.read(ROOT / name, as_version=4)
    given = {**notebook_parameters(name, env), **params}  # after the parameters cell, as papermill injects them
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in given.items())))
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    interrupted = threading.Event()

    def interrupt_after_the_first_checkpoint():
        while not saved.exists():
            time.sleep(0.02)
        interrupted.set()
        os.kill(client.km.provisioner.process.pid, signal.SIGINT)  # what Jupyter's interrupt button sends

    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if "train.fit(" in cell.source:
                threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True).start()
            try:
                client.execute_cell(cell, i)
            except CellExecutionError as e:
                assert interrupted.is_set() and "KeyboardInterrupt" in str(e), e
                break
        else:
            pytest.fail("the training cell was not interrupted")
    assert "unfinished after epoch 1 of 3" in ckpt.describe(saved)

    again = _run(name, env, fresh=False, **params)  # as a user would: the same parameters, RESUME at its default
    out = "".join(o.get("text", "") for c in again.cells if "train.fit(" in c.source for o in c.outputs)
    assert f"resumed {saved} after epoch 1" in out and "epoch   3 |" in out and "epoch   1 |" not in out, out
    record = _record(env, "VisualizeAttentionMap")
    assert record["metrics"]["epochs_run"] == 3 and len(record["history"]["epoch"]) == 3
