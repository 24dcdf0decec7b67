"""Precision, attention-kernel and compile choices per device (capabilities mocked), fp16 + gradient scaler
and bf16 training on the CPU."""
import sys

import pytest
import torch
import torch.nn.functional as F

import vit_helpers as vh
from vitkit import runtime, train
from conftest import ROOT, loader, quadrant_data, tiny_vit

ZEN3 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512vl\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_bf16 amx_tile\n"


def test_cpuinfo_flags_decide_native_bf16():
    assert runtime._cpuinfo_has_bf16(ZEN3) is False
    assert runtime._cpuinfo_has_bf16(ZEN4) is True
    assert runtime._cpuinfo_has_bf16(SAPPHIRE_RAPIDS) is True
    assert runtime._cpuinfo_has_bf16("") is False


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert runtime.resolve_precision("cpu") == expected


@pytest.mark.parametrize("bf16_gpu, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda(monkeypatch, bf16_gpu, expected):
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return bf16_gpu

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert runtime.resolve_precision(torch.device("cuda")) == expected
    assert calls == [False]  # emulated bf16 (a T4) must not count as native


def test_auto_precision_elsewhere_and_forced(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_precision("mps") == "fp32"
    for p in ("bf16", "fp16", "fp32"):
        assert runtime.resolve_precision("cpu", p) == p
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        runtime.resolve_precision("cpu", "half")


def test_attention_path_choice():
    q32 = torch.zeros(1, 2, 3, 4)
    assert vh.use_fused_attention(None, q32) is True  # fp32 CPU: SDPA
    assert vh.use_fused_attention(None, q32.bfloat16()) is False  # bf16 CPU: the explicit path is faster
    assert vh.use_fused_attention(None, q32.half()) is False
    assert vh.use_fused_attention(None, torch.zeros(1, 2, 3, 4, dtype=torch.bfloat16, device="meta")) is True
    assert vh.use_fused_attention(True, q32.bfloat16()) is True  # forced
    assert vh.use_fused_attention(False, q32) is False
    with pytest.raises(TypeError, match="fused_attn must be None"):
        vh.VisionTransformer(image_size=8, patch_size=4, in_channels=1, num_classes=2, dim=8, depth=1, heads=2,
                             mlp_dim=8, fused_attn="yes")


def _sdpa_calls(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].dtype)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_model_follows_the_choice_under_autocast(monkeypatch):
    calls = _sdpa_calls(monkeypatch)
    model = tiny_vit().eval()
    x = torch.randn(2, 1, 16, 16)
    model(x)
    assert calls == [torch.float32]  # fp32 on a CPU: SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert calls == [torch.float32]  # bf16 on a CPU: explicit path, SDPA not called
    torch.testing.assert_close(low.float(), model(x), atol=0.05, rtol=0.05)
    forced = vh.VisionTransformer(**{**tiny_vit().config.__dict__, "fused_attn": True}).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forced(x)
    assert calls[-1] == torch.bfloat16


def test_both_attention_paths_compute_the_same_function():
    torch.manual_seed(0)
    kwargs = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64)
    fused = vh.VisionTransformer(**kwargs, fused_attn=True).eval()
    explicit = vh.VisionTransformer(**kwargs, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert (fused(x) - explicit(x)).abs().max().item() < 1e-5


def test_compile_choice(monkeypatch):
    import platform
    import shutil
    from vitkit import budget
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")
    assert runtime.resolve_compile("auto", cpu, "fp32", True) is True  # +17 % measured on a 2-core CPU
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert runtime.resolve_compile("auto", cpu, "fp32", True) is False  # inductor needs a C++ compiler
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert runtime.resolve_compile("auto", cpu, "fp32", True) is False
    assert runtime.resolve_compile("auto", cuda, "bf16", True) is True
    assert runtime.resolve_compile("auto", cuda, "bf16", False) is False  # too short to repay compilation
    assert runtime.resolve_compile(True, cpu, "fp32", False) is True
    assert runtime.resolve_compile(False, cuda, "bf16", True) is False
    with pytest.raises(ValueError, match="compile must be True, False or 'auto'"):
        runtime.resolve_compile("yes", cpu, "fp32", True)
    cfg = train.FitConfig(epochs=1)
    assert budget.repays_compilation(cfg, 1000, "cpu") and not budget.repays_compilation(cfg, 999, "cpu")
    assert budget.repays_compilation(cfg, 300, "cuda") and not budget.repays_compilation(cfg, 299, "cuda")
    short = train.FitConfig(epochs=100, time_budget_s=60)  # a minute: compilation would eat half of it
    assert not budget.repays_compilation(short, 10_000, "cpu") and not budget.repays_compilation(short, 10_000, "cuda")
    assert budget.repays_compilation(train.FitConfig(epochs=100, time_budget_s=600), 10_000, "cpu")


def test_a_model_trained_with_dropout_is_compiled_on_a_cpu_with_aten_random_numbers():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    kwargs = dict(image_size=16, patch_size=4, in_channels=3, num_classes=10, dim=32, depth=1, heads=2, mlp_dim=64)
    assert not runtime.trains_with_dropout(vh.VisionTransformer(**kwargs))
    assert runtime.compile_options(vh.VisionTransformer(**kwargs), cpu) is None
    for name in ("dropout", "attn_dropout", "mlp_dropout"):  # any one of them draws masks
        model = vh.VisionTransformer(**kwargs, **{name: 0.1})
        assert runtime.trains_with_dropout(model)
        assert runtime.compile_options(model, cpu) == {"fallback_random": True}
        assert runtime.compile_options(model, cuda) is None  # inductor's GPU generator is fast
    hf = vh.to_hf(vh.VisionTransformer(**kwargs, dropout=0.1, attn_dropout=0.1))
    assert runtime.trains_with_dropout(hf) and not runtime.trains_with_dropout(vh.to_hf(vh.VisionTransformer(**kwargs)))


@pytest.mark.slow
def test_compiled_with_those_options_a_model_draws_its_masks_from_torchs_seed():
    runtime.import_inductor_quietly()
    model = vh.VisionTransformer(image_size=16, patch_size=4, in_channels=3, num_classes=10, dim=32, depth=2, heads=2,
                                 mlp_dim=64, dropout=0.2, attn_dropout=0.2, mlp_dropout=0.2).train()
    x = torch.randn(4, 3, 16, 16)
    compiled = torch.compile(model, options=runtime.compile_options(model, torch.device("cpu")))
    torch.manual_seed(5)
    first = compiled(x)
    torch.manual_seed(5)
    torch.testing.assert_close(compiled(x), first, rtol=0, atol=0)  # the same seed: the same masks
    torch.manual_seed(6)
    assert (compiled(x) - first).abs().max() > 0.1  # another seed: other masks
    torch.testing.assert_close(compiled.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)  # no masks: one function


def test_the_dropout_bench_builds_each_path_with_and_without_the_recipes_dropout():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_dropout

    from vitkit import recipes
    models = bench_dropout.variants(recipes.get_recipe("cifar10-original")["model"])  # compiles lazily: cheap here
    assert list(models) == [f"{path}, {label}" for label in ("dropout", "torch's dropout", "no dropout")
                            for path in ("eager", "compiled", "compiled, aten random")]
    assert all(runtime.trains_with_dropout(m) == (not name.endswith("no dropout")) for name, m in models.items())
    kinds = lambda m: {type(d) for d in m.modules() if isinstance(d, torch.nn.Dropout)}  # noqa: E731
    assert kinds(models["eager, dropout"]) == {vh.Dropout} and kinds(models["eager, torch's dropout"]) == {torch.nn.Dropout}
