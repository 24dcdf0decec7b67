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
    for name in ("dropout", "attn_dropout"):  # HF's ViT: nn.Dropout modules, and its attention's own probability
        assert runtime.trains_with_dropout(vh.to_hf(vh.VisionTransformer(**kwargs, **{name: 0.1})))
    assert not runtime.trains_with_dropout(vh.to_hf(vh.VisionTransformer(**kwargs)))


@pytest.mark.slow
def test_compiled_with_those_options_dropout_keeps_its_rate_and_scale_and_follows_the_seed():
    runtime.import_inductor_quietly()
    drop = vh.Dropout(0.2).train()
    compiled = torch.compile(drop, options=runtime.compile_options(drop, torch.device("cpu")))
    x = torch.full((500, 1000), 3.0)
    torch.manual_seed(5)
    y = compiled(x)
    kept, cut = y != 0, round(0.2 * 65536)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 * 65536 / (65536 - cut)))
    rate = 1 - cut / 65536
    assert abs(kept.float().mean().item() - rate) < 5 * (rate * (1 - rate) / x.numel()) ** 0.5
    torch.manual_seed(5)
    assert torch.equal(compiled(x) != 0, kept)  # the same seed: the same mask
    torch.manual_seed(6)
    assert not torch.equal(compiled(x) != 0, kept)


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


@pytest.mark.slow
def test_fit_with_compile_trains_the_original_model(monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):  # dynamo tracing without inductor's C++ build (fast in tests)
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    runtime.set_seed(0)
    model = tiny_vit()
    before = model.head.weight.detach().clone()
    hist = train.fit(model, loader(quadrant_data(64, 0), shuffle=True), loader(quadrant_data(32, 1)), epochs=2,
                     compile=True, device="cpu", precision="fp32", progress=False, verbose=False)
    assert compiled == [model] and hist.compiled is True
    assert not torch.equal(before, model.head.weight)  # the compiled wrapper shares the parameters
    torch._dynamo.reset()


def test_fit_records_its_choices(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    hist = train.fit(tiny_vit(), loader(quadrant_data(32, 0)), epochs=1, device="cpu", progress=False)
    assert (hist.precision, hist.attention, hist.compiled, hist.device) == ("fp32", "SDPA (auto)", False, "cpu")
    out = capsys.readouterr().out
    assert out.count("fit: cpu in fp32 (CPU without native bf16") == 1 and "attention ran SDPA (auto)" in out


def test_fit_reports_no_attention_path_for_a_model_without_attention(capsys):
    from vitkit import baselines
    cnn = baselines.SmallCNN(in_channels=1, num_classes=4, channels=(4, 4, 4, 4))
    hist = train.fit(cnn, loader(quadrant_data(32, 0)), epochs=1, device="cpu", progress=False)
    assert hist.attention is None and "attention ran" not in capsys.readouterr().out


def test_fp16_with_gradient_scaler_trains_on_cpu(monkeypatch):
    scalers = []
    real = torch.amp.GradScaler

    def recording(*args, **kwargs):
        scalers.append(real(*args, **kwargs))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", recording)
    runtime.set_seed(0)
    model = tiny_vit()
    train_loader, val = loader(quadrant_data(256, 0), shuffle=True), loader(quadrant_data(64, 1))
    hist = train.fit(model, train_loader, val, epochs=10, lr=3e-3, precision="fp16", grad_clip=1.0, device="cpu",
                     progress=False, verbose=False)
    assert hist.precision == "fp16" and hist.attention == "explicit (auto)"
    assert len(scalers) == 1 and scalers[0].get_scale() > 0
    assert len(hist.lr) == hist.total_steps == 80
    assert train.evaluate(model, val, precision="fp16")["acc"] >= 0.9


@pytest.mark.slow
def test_bf16_training_on_cpu_matches_fp32():
    accs = {}
    for precision in ("fp32", "bf16"):
        runtime.set_seed(0)
        model = tiny_vit()
        train_loader, val = loader(quadrant_data(256, 0), shuffle=True), loader(quadrant_data(128, 1))
        hist = train.fit(model, train_loader, val, epochs=15, lr=3e-3, precision=precision, device="cpu", progress=False,
                         verbose=False)
        assert hist.precision == precision
        accs[precision] = train.evaluate(model, val, precision=precision)["acc"]
    assert accs["fp32"] >= 0.95 and accs["bf16"] >= 0.95
    assert abs(accs["fp32"] - accs["bf16"]) <= 0.03


@pytest.mark.parametrize("native_bf16, precision, attention", [(True, "bf16", "explicit (auto)"),
                                                                (False, "fp32", "SDPA (auto)")])
def test_fit_follows_the_native_bf16_decision(monkeypatch, native_bf16, precision, attention):
    """The decision mocked, the arithmetic real: one step of a tiny model (cheap even where bf16 is emulated)."""
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    hist = train.fit(tiny_vit(), loader(quadrant_data(16, 0)), epochs=1, device="cpu", compile=False,
                     progress=False, verbose=False)
    assert (hist.precision, hist.attention, hist.total_steps) == (precision, attention, 1)
    assert train.evaluate(tiny_vit(), loader(quadrant_data(16, 1)))["n"] == 16


@pytest.mark.parametrize("native_bf16, precision, reason", [
    (True, "bf16", "CPU with AVX512-BF16/AMX"), (True, "fp32", "CPU with AVX512-BF16/AMX; fp32 as asked"),
    (False, "fp32", "CPU without native bf16 (AVX512-BF16/AMX)"),
    (False, "bf16", "CPU without native bf16 (AVX512-BF16/AMX); bf16 as asked")])
def test_the_set_up_line_says_why_this_precision(monkeypatch, native_bf16, precision, reason):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert runtime.precision_reason(torch.device("cpu"), precision) == reason


def test_a_convolutional_stem_trains_channels_last_and_eager_on_a_cpu_in_bf16(monkeypatch):
    import platform
    import shutil
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/g++")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small = dict(image_size=16, in_channels=1, num_classes=4, dim=16, depth=1, heads=2, mlp_dim=32)
    cct = vh.VisionTransformer(**small, patch_size=4, stem="cct")
    patch = vh.VisionTransformer(**small, patch_size=4)  # its one convolution's kernel is its stride: no overlap
    assert runtime.channels_last_convolutions(cct, cpu, "bf16")
    assert not runtime.channels_last_convolutions(cct, cpu, "fp32")  # measured in bf16 only
    assert not runtime.channels_last_convolutions(cct, cuda, "bf16")
    assert not runtime.channels_last_convolutions(patch, cpu, "bf16")
    conv = vh.VisionTransformer(**small, patch_size=4, stem="conv")
    assert not runtime.channels_last_convolutions(conv, cpu, "bf16")  # not measured: fit's usual choice
    assert runtime.channels_last_convolutions(conv, cpu, "fp32", True)  # asked for (FitConfig.channels_last)
    assert not runtime.channels_last_convolutions(cct, cpu, "bf16", False)
    assert runtime.resolve_compile("auto", cpu, "bf16", True, cct) is False  # eager was faster, in either layout
    assert runtime.resolve_compile("auto", cpu, "bf16", True, patch) is True
    assert runtime.resolve_compile(True, cpu, "bf16", True, cct) is True  # asked for: compiled


def test_fit_in_channels_last_trains_the_same_model_and_hands_it_back_in_its_layout(monkeypatch, capsys):
    loader = torch.utils.data.DataLoader(quadrant_data(64, 0), batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))

    def trained(layout_check):
        monkeypatch.setattr(train, "channels_last_convolutions", layout_check)
        runtime.set_seed(0)
        m = vh.VisionTransformer(image_size=16, patch_size=4, in_channels=1, num_classes=4, dim=16, depth=1, heads=2,
                                 mlp_dim=32, stem="cct")
        seen, second_conv = [], [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)][1]  # input: 8 channels
        hook = second_conv.register_forward_pre_hook(lambda mod, args: seen.append(
            args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
        hist = train.fit(m, loader, epochs=2, lr=3e-3, device="cpu", precision="bf16", compile="auto", progress=False,
                         verbose=True)
        hook.remove()
        return m, seen, hist

    reference, seen_ref, _ = trained(lambda *a: False)
    capsys.readouterr()
    m, seen, hist = trained(runtime.channels_last_convolutions)
    out = capsys.readouterr().out
    assert "torch.compile off, channels-last convolutions" in out and hist.channels_last
    steps = 2 * len(loader)  # the last forward passes (the first one counts FLOPs before training)
    assert len(seen) > steps and all(seen[-steps:]) and not any(seen_ref)  # the stem ran channels-last at every step
    for (name, a), b in zip(m.state_dict().items(), reference.state_dict().values()):
        assert a.is_contiguous(), f"{name} left fit channels-last"
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05, msg=f"{name} trained differently")
