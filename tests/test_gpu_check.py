"""scripts/gpu_check.py, scaled down, on the CPU: every part runs and lands in the record."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from smoke_env import fake_data  # noqa: E402
from vitkit import runtime  # noqa: E402


def _cpuinfo() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


@pytest.mark.slow
def test_gpu_check_runs_scaled_down_on_cpu(tmp_path):
    fake_data(tmp_path / "data")
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--small", "--device", "cpu",
                           "--data-root", str(tmp_path / "data"), "--out", str(out),
                           "--notebooks", "VisionTransformer.ipynb"],  # the quickest notebook
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads(out.read_text())["metrics"]
    assert m["failed"] == []
    # fit's default precision on this CPU comes from the capability function the code uses (in the subprocess,
    # unmocked): bf16 where the CPU has it natively, fp32 where not; its row is under that precision.
    default = m["bench"]["fit_default"]["cpu"]["precision"]
    assert default == ("bf16" if runtime._cpuinfo_has_bf16(_cpuinfo()) else "fp32")
    assert m["bench"]["training_images_per_s"][f"cpu-{default}"]["ours (fit default)"] > 0
    assert len(m["strong"]["val_acc"]) == 1 and m["strong"]["planned_epochs"] == 100
    assert m["finetune"]["optimizer_steps"] == 2 and m["finetune"]["image_size"] == 64
    assert m["finetune_original"]["optimizer_steps"] == 2 and m["finetune_original"]["batch"] == 8
    assert m["loader"]["images_per_s"] > 0 and m["loader"]["loader_over_training"] > 0
    assert set(m["notebooks"]["seconds"]) == {"VisionTransformer.ipynb"}
