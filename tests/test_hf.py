import pytest
import torch

import vit_helpers as vh

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "cifar": dict(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=64, depth=2, heads=4, mlp_dim=128),
    "no-qkv-bias": dict(image_size=32, patch_size=8, in_channels=3, num_classes=7, dim=48, depth=2, heads=3,
                        mlp_dim=96, qkv_bias=False),
    "one-channel": dict(image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=32, depth=3, heads=2, mlp_dim=64),
    "eps-1e-6": dict(image_size=48, patch_size=16, in_channels=3, num_classes=1000, dim=64, depth=2, heads=8,
                     mlp_dim=256, layer_norm_eps=1e-6),
}


def hf_model(cfg, attn="eager"):
    hf_cfg = transformers.ViTConfig(
        image_size=cfg["image_size"], patch_size=cfg["patch_size"], num_channels=cfg["in_channels"],
        hidden_size=cfg["dim"], num_hidden_layers=cfg["depth"], num_attention_heads=cfg["heads"],
        intermediate_size=cfg["mlp_dim"], qkv_bias=cfg.get("qkv_bias", True),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), num_labels=cfg["num_classes"])
    torch.manual_seed(1)
    model = transformers.ViTForImageClassification._from_config(hf_cfg, attn_implementation=attn).eval()
    with torch.no_grad():  # HF zero-inits biases; randomise every weight so that nothing matches by accident
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(cfg):
    torch.manual_seed(2)
    return torch.randn(3, cfg["in_channels"], cfg["image_size"], cfg["image_size"])


def assert_match(ours, hf, x):
    logits, attentions = ours(x, return_attentions=True)
    out = hf(pixel_values=x, output_attentions=True)
    assert (logits - out.logits).abs().max().item() < 1e-4
    assert len(attentions) == len(out.attentions)
    for a, b in zip(attentions, out.attentions):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4
    assert (ours(x) - out.logits).abs().max().item() < 1e-4  # the SDPA path too


@pytest.mark.parametrize("name", CONFIGS)
def test_from_hf_matches_hf(name):
    cfg = CONFIGS[name]
    hf = hf_model(cfg)
    ours = vh.from_hf(hf).eval()
    assert ours.config.qkv_bias == cfg.get("qkv_bias", True)
    assert ours.config.layer_norm_eps == cfg.get("layer_norm_eps", 1e-12)
    assert_match(ours, hf, batch(cfg))


@pytest.mark.parametrize("name", CONFIGS)
def test_to_hf_matches_ours(name):
    cfg = CONFIGS[name]
    torch.manual_seed(3)
    ours = vh.VisionTransformer(**cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf = vh.to_hf(ours).eval()
    assert isinstance(hf, transformers.ViTForImageClassification)
    assert_match(ours, hf, batch(cfg))


def test_round_trip_preserves_every_weight():
    ours = vh.VisionTransformer(**CONFIGS["no-qkv-bias"])
    back = vh.from_hf(vh.to_hf(ours))
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k


def test_transformers_4x_names_round_trip():
    sd = vh._hf_state_dict_v5(vh.to_hf(vh.VisionTransformer(**CONFIGS["cifar"])))  # 5.x names, any version
    assert "vit.layers.0.attention.q_proj.weight" in sd
    v4 = vh._hf_to_v4_names(sd)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in v4
    assert "vit.encoder.layer.1.output.dense.bias" in v4
    assert "vit.encoder.layer.0.intermediate.dense.weight" in v4

    class Fake4x:  # stands in for a transformers 4.x model: only state_dict() is read
        def state_dict(self):
            return v4

    assert vh._hf_state_dict_v5(Fake4x()).keys() == sd.keys()


def test_hf_sdpa_attentions_are_rejected_by_rollout():
    hf = hf_model(CONFIGS["cifar"], attn="sdpa")
    out = hf(pixel_values=batch(CONFIGS["cifar"]), output_attentions=True)
    with pytest.raises((TypeError, ValueError), match="eager|empty"):
        vh.attention_rollout(out.attentions)


def test_rollout_accepts_hf_attentions():
    cfg = CONFIGS["cifar"]
    hf = hf_model(cfg)
    x = batch(cfg)
    ours = vh.from_hf(hf).eval()
    _, attentions = ours(x, return_attentions=True)
    hf_map = vh.attention_rollout(hf(pixel_values=x, output_attentions=True).attentions)
    assert hf_map.shape == (3, 8, 8)
    torch.testing.assert_close(hf_map, vh.attention_rollout(attentions), atol=1e-5, rtol=1e-4)


def test_from_hf_rejects_other_objects():
    with pytest.raises(TypeError, match="ViTForImageClassification"):
        vh.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="VisionTransformer"):
        vh.to_hf(torch.nn.Linear(2, 2))
