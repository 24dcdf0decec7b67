import dataclasses

import pytest
import torch

import vit_helpers as vh

CIFAR_TINY = dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64)


def make(**overrides):
    torch.manual_seed(0)
    return vh.VisionTransformer(**{**CIFAR_TINY, **overrides}).eval()


def test_logits_and_attention_shapes():
    model = make()
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    logits, attentions = model(x, return_attentions=True)
    assert logits.shape == (3, 10)
    assert isinstance(attentions, tuple) and len(attentions) == 2
    T = 1 + (32 // 4) ** 2
    for a in attentions:
        assert a.shape == (3, 4, T, T)
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 4, T))  # post-softmax probabilities


@pytest.mark.parametrize("overrides", [{}, dict(qkv_bias=False), dict(in_channels=1, image_size=28, patch_size=7),
                                       dict(dim=48, heads=3, depth=3)])
def test_sdpa_path_matches_explicit_path(overrides):
    model = make(**overrides)
    cfg = model.config
    x = torch.randn(4, cfg.in_channels, cfg.image_size, cfg.image_size)
    fused = model(x)
    explicit, _ = model(x, return_attentions=True)
    assert (fused - explicit).abs().max().item() < 1e-5


def test_forward_is_features_then_head():
    model = make()
    x = torch.randn(2, 3, 32, 32)
    features, attentions = model.forward_features(x)
    assert features.shape == (2, 65, 32) and attentions == ()
    torch.testing.assert_close(model.forward_head(features), model(x))


def test_parameter_count_matches_formula():
    D, L, M, P, C, K, T = 32, 2, 64, 4, 3, 10, 65
    per_block = 2 * 2 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * M + M) + (M * D + D)
    expected = (C * P * P * D + D) + D + T * D + L * per_block + 2 * D + (D * K + K)
    assert vh.count_parameters(make()) == expected


def test_init_truncated_normal_and_zero_biases():
    model = make(dim=128, mlp_dim=256)
    w = model.blocks[0].mlp.fc1.weight
    assert w.abs().max().item() <= 0.04 + 1e-7  # truncated at 2 std
    assert abs(w.std().item() - 0.0176) < 0.001  # std of N(0, 0.02) truncated at +-2 std is 0.88 * 0.02
    assert model.blocks[0].attn.qkv.bias.abs().sum().item() == 0
    assert model.head.bias.abs().sum().item() == 0
    assert torch.equal(model.norm.weight, torch.ones(128))


def test_config_properties():
    cfg = vh.ViTConfig(**CIFAR_TINY)
    assert (cfg.grid_size, cfg.num_tokens) == (8, 65)
    assert vh.VisionTransformer.from_config(cfg).config == cfg


@pytest.mark.parametrize("overrides, message", [
    (dict(patch_size=5), "patch_size=5 does not divide image_size=32"),
    (dict(heads=5), "heads=5 does not divide dim=32"),
    (dict(depth=0), "depth must be >= 1"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_bad_config_raises_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        vh.VisionTransformer(**{**CIFAR_TINY, **overrides})


def test_non_int_config_raises_type_error():
    with pytest.raises(TypeError, match="dim must be an int"):
        vh.VisionTransformer(**{**CIFAR_TINY, "dim": 32.0})


def test_keyword_only_constructor():
    with pytest.raises(TypeError):
        vh.VisionTransformer(32, 4, 3, 10, 32, 2, 4, 64)


@pytest.mark.parametrize("x, error, message", [
    (torch.randn(3, 32, 32), ValueError, r"4-D batch .*x\.unsqueeze\(0\)"),
    (torch.randn(2, 1, 32, 32), ValueError, "expected 3 channel"),
    (torch.randn(2, 3, 28, 28), ValueError, "expected 32x32 images, got 28x28"),
    ([[1.0]], TypeError, "expected a torch.Tensor"),
])
def test_bad_input_raises_clear_errors(x, error, message):
    with pytest.raises(error, match=message):
        make()(x)


def test_save_and_load_model_round_trip(tmp_path):
    model = make(stem="conv", fused_attn=False)
    path = vh.save_model(model, tmp_path / "w" / "m.safetensors", recipe="x", test_acc=0.5)
    loaded, meta = vh.load_model(path)
    assert meta == {"recipe": "x", "test_acc": 0.5} and loaded.config == model.config and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(ValueError, match=r"save to a .safetensors file"):
        vh.save_model(model, tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="TRAIN = True"):
        vh.load_model(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("stem, rows, cols, shift", [("conv", (17, 31), (25, 39), -3.5),
                                                     ("conv-centred", (17, 38), (25, 46), 0.0)])
def test_conv_stem_receptive_field_and_where_it_is_centred(stem, rows, cols, shift):
    # Token (3, 4) of an 8x8-patch grid owns rows 24..31 and columns 32..39 (centre (27.5, 35.5)). Three stride-2
    # 3x3 convolutions (padding 1) see pixels 8i-7 .. 8i+7: centred 3.5 px up and left of the patch. 4x4 kernels
    # see 8i-7 .. 8i+14: centred on it.
    torch.manual_seed(0)
    stem_module = vh.VisionTransformer(image_size=64, patch_size=8, in_channels=1, num_classes=2, dim=32, depth=1,
                                       heads=2, mlp_dim=8, stem=stem).eval().patch_embed
    x = torch.randn(4, 1, 64, 64, requires_grad=True)
    stem_module(x)[:, 3 * 8 + 4].abs().sum().backward()
    seen_rows, seen_cols = x.grad.abs().sum((0, 1)).nonzero().unbind(1)
    assert (seen_rows.min().item(), seen_rows.max().item()) == rows
    assert (seen_cols.min().item(), seen_cols.max().item()) == cols
    centre = ((seen_rows.min() + seen_rows.max()).item() / 2, (seen_cols.min() + seen_cols.max()).item() / 2)
    assert centre == (27.5 + shift, 35.5 + shift)  # the measured field's centre against the patch's


def test_conv_stem_keeps_the_token_grid_and_checks_the_patch_size():
    model = make(stem="conv")
    x = torch.randn(2, 3, 32, 32)
    logits, attentions = model(x, return_attentions=True)
    assert logits.shape == (2, 10) and attentions[0].shape == (2, 4, 65, 65)  # 8x8 patches + CLS, as with "patch"
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]  # log2(4) stride-2 3x3 convs, then 1x1
    with pytest.raises(ValueError, match="patch_size must be a power of 2"):
        vh.VisionTransformer(image_size=30, patch_size=6, in_channels=3, num_classes=2, dim=8, depth=1, heads=2,
                             mlp_dim=8, stem="conv")
    with pytest.raises(ValueError, match="stem must be 'patch'"):
        make(stem="cnn")


def test_a_config_or_its_keywords_build_the_same_model():
    cfg = vh.ViTConfig(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64)
    torch.manual_seed(0)
    a = vh.VisionTransformer(cfg)
    torch.manual_seed(0)
    b = vh.VisionTransformer(**dataclasses.asdict(cfg))
    assert a.config == b.config and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                            b.state_dict().values()))
    with pytest.raises(TypeError, match="pass a ViTConfig or keyword options, not both"):
        vh.VisionTransformer(cfg, dim=64)


def test_embed_scale_multiplies_the_token_embeddings_by_sqrt_dim():
    """The patch embedding is linear, so scaling the tokens by sqrt(D) is scaling its weights and bias, and the CLS
    token, by sqrt(D) (the positions are added after the scaling)."""
    kwargs = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=16, depth=1, heads=2, mlp_dim=32)
    scaled = vh.VisionTransformer(**kwargs, embed_scale=True).eval()
    plain = vh.VisionTransformer(**kwargs).eval()
    state = scaled.state_dict()
    for name in ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token"):
        state[name] = state[name] * 4.0  # sqrt(16)
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-5, atol=1e-5)


def test_torch_init_uses_pytorch_defaults_and_unit_normal_embeddings():
    torch.manual_seed(0)
    model = vh.VisionTransformer(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=2, heads=4,
                                 mlp_dim=1024, init="torch")
    fc1 = model.blocks[0].mlp.fc1  # PyTorch's Linear: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / 128 ** 0.5
    assert fc1.weight.abs().max() <= bound and fc1.bias.abs().max() <= bound
    assert fc1.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # the uniform's std
    assert fc1.bias.abs().mean().item() == pytest.approx(bound / 2, rel=0.1)  # not zero, as trunc_normal's are
    assert torch.equal(model.norm.weight, torch.ones(128)) and torch.equal(model.norm.bias, torch.zeros(128))
    assert model.pos_embed.std().item() == pytest.approx(1.0, rel=0.03)  # N(0, 1): 65 x 128 values
    assert model.cls_token.std().item() == pytest.approx(1.0, rel=0.2)
    default = vh.VisionTransformer(**{**dataclasses.asdict(model.config), "init": "trunc_normal"})
    # N(0, 0.02) truncated at +-2 std has std 0.02 x 0.8796
    assert default.pos_embed.std().item() == pytest.approx(0.02 * 0.8796, rel=0.03) and not default.head.bias.any()
    with pytest.raises(ValueError, match="init must be 'trunc_normal'"):
        vh.VisionTransformer(**{**dataclasses.asdict(model.config), "init": "xavier"})


def test_dropout_keeps_each_value_with_the_rounded_rate_and_scales_it_by_its_inverse():
    drop = vh.Dropout(0.2).train()
    cut = round(0.2 * 65536)  # 13107: p is rounded to a multiple of 1/65536
    x = torch.full((1000, 1000), 3.0, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    scale = 65536 / (65536 - cut)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 * scale))  # kept values scaled exactly
    rate, n = 1 - cut / 65536, x.numel()
    assert abs(kept.float().mean().item() - rate) < 5 * (rate * (1 - rate) / n) ** 0.5
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)  # the gradient goes through the same mask
    torch.manual_seed(0)
    assert torch.equal(drop(x.detach()) != 0, kept)  # the masks follow torch's seed
    z = torch.randn(4, 5)
    assert drop.eval()(z) is z and vh.Dropout(0.0).train()(z) is z  # no mask in eval mode or at p = 0
    odd = vh.Dropout(0.5).train()(torch.ones(3, 5, dtype=torch.bfloat16))  # an odd number of elements, bf16
    assert odd.dtype == torch.bfloat16 and set(odd.unique().tolist()) <= {0.0, 2.0}
    torch.manual_seed(0)
    assert vh.Dropout(1 - 1e-6).train()(torch.ones(10)).abs().sum() == 0  # p next to 1: PyTorch's masks
    tenth = vh.Dropout(0.1).train()(torch.ones(10_000, dtype=torch.bfloat16))  # the scale rounded once into bf16
    assert set(tenth.unique().tolist()) <= {0.0, torch.tensor(65536 / (65536 - 6554)).bfloat16().item()}
