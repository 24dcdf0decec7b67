import json
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import results_table  # noqa: E402


def test_readme_tables_match_results():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_result_record_is_complete():
    for path in (ROOT / "results").glob("*.json"):
        rec = json.loads(path.read_text())
        for key in ("metrics", "config", "seed", "hardware", "wall_time_s", "dataset"):
            assert key in rec, f"{path.name} lacks {key}"


def test_table_renders_a_record(tmp_path):
    rec = {"metrics": {"test_acc": 0.9912, "best_val_acc": 0.99, "epochs_run": 3, "parameters": 212_345}, "seed": 0, "wall_time_s": 600,
           "dataset": "torchvision MNIST IDX files at x", "config": {"recipe": "mnist-x", "budget_min": 10, "threads": 1,
                                                                     "fit": {"epochs": 40}},
           "hardware": {"cpu": "Some CPU", "cpu_count": 2, "torch_threads": 1}}
    (tmp_path / "mnist-x-cpu.json").write_text(json.dumps(rec))
    table = results_table.results_table(results_table.load_records(tmp_path))
    assert "| `mnist-x` | **99.12 %** | 99.00 % | 0.21 M | 10 min wall, 3 epochs of 40, budget 10 min | Some CPU, 1 of 2 CPU" in table


def test_original_table_compares_a_complete_resumed_run_both_ways(tmp_path):
    stretch = dict(machine="Some CPU", native_bf16=True, precision="fp32", commit="abc")
    rec = {"metrics": {"test_acc": 0.7351, "final_epoch_test_acc": 0.7302, "best_epoch": 28, "epochs_run": 30},
           "seed": 0, "wall_time_s": 5.25 * 3600, "dataset": "CIFAR-10 JPEG",
           "config": {"recipe": "cifar10-seed", "fit": {"epochs": 30}, "threads": 2,
                      "stretches": [dict(stretch, threads=1), dict(stretch, threads=2), dict(stretch, threads=2)]},
           "hardware": {"cpu": "Some CPU", "cpu_count": 2, "torch_threads": 2, "cpu_native_bf16": True}}
    (tmp_path / "cifar10-seed-full.json").write_text(json.dumps(rec))
    partial = dict(rec, metrics=dict(rec["metrics"], epochs_run=4, test_acc=0.5))  # stopped by its budget: left out
    (tmp_path / "cifar10-seed-cpu.json").write_text(json.dumps(partial))
    table = results_table.original_table(results_table.load_records(tmp_path))
    assert table.splitlines()[2:] == [
        "| `cifar10-seed` | CIFAR-10, 30 epochs | 74.72 % | **73.02 %** | **73.51 %** (epoch 28) | 5.2 h, Some CPU "
        "(AVX512-BF16), fp32, 1-2 of 2 CPU threads, 3 stretches (2 resumes) | "
        "[cifar10-seed-full.json](results/cifar10-seed-full.json) |"]
    (tmp_path / "cifar10-seed-full.json").unlink()
    assert "No complete run" in results_table.original_table(results_table.load_records(tmp_path))
