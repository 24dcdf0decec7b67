"""The inductive-bias options of ViTConfig: shifted patch tokenization, the CCT tokenizer, locality self-attention,
sin-cos position embeddings (and the stride-2 convolutional stem in test_model.py). Defaults stay the paper's ViT (tests/test_hf.py)."""
import math

import pytest
import torch

import vit_helpers as vh
from vitkit import train

TINY = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=2, heads=4, mlp_dim=64)


def make(**overrides):
    torch.manual_seed(0)
    return vh.VisionTransformer(**{**TINY, **overrides}).eval()


def test_shifted_patch_tokens_see_half_a_patch_around_their_patch():
    spt = make(stem="spt").patch_embed
    x = torch.randn(1, 3, 16, 16)
    base = spt(x)
    assert base.shape == (1, 16, 32)

    def changed_tokens(row, col):
        y = x.clone()
        y[0, :, row, col] += 10.0
        return set((spt(y) - base).abs().amax(-1)[0].nonzero().flatten().tolist())

    # Patch 0 covers rows/cols 0..3; shifts of 2 px reach 2 px beyond it: cols 4..5 count, col 6 does not.
    assert 0 in changed_tokens(1, 5) and 0 not in changed_tokens(1, 6)
    # A pixel inside patch 5 (rows 4..7, cols 4..7), 2 px from every border, reaches its own patch and the
    # diagonal neighbours only through the corner shifts: exactly the patches within 2 px.
    assert changed_tokens(6, 6) == {5, 6, 9, 10}
    assert changed_tokens(5, 5) == {0, 1, 4, 5}
    # The plain linear patch embedding sees only its own patch.
    plain = make().patch_embed
    y = x.clone()
    y[0, :, 1, 5] += 10.0
    assert (plain(y) - plain(x)).abs().amax(-1)[0].nonzero().flatten().tolist() == [1]


def test_cct_tokenizer_pools_to_the_patch_grid_and_sees_13_pixels_around():
    model = make(stem="cct", image_size=32)
    convs = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.patch_embed.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [c.stride for c in convs] == [(1, 1), (1, 1), (1, 1)] and len(pools) == 2  # log2(4) conv+pool, 1x1
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    tokens = model.patch_embed(x)
    assert tokens.shape == (1, 64, 32)  # the 8x8 grid of a patch-4 ViT
    # Token (3, 4) sees pixels 4i-6 .. 4i+6 per axis (conv 3 -> pool 3/2 -> conv 3 -> pool 3/2): 13 x 13.
    tokens[0, 3 * 8 + 4].sum().backward()
    rows, cols = x.grad[0].abs().sum(0).nonzero().unbind(1)
    assert rows.min() >= 6 and rows.max() <= 18 and cols.min() >= 10 and cols.max() <= 22
    assert rows.min() < 12 and rows.max() > 15  # reaches beyond its own 4x4 patch (rows 12..15)
    # Same token grid, so rollout and the HF-free parts work unchanged; HF cannot express it.
    _, attentions = model(torch.randn(2, 3, 32, 32), return_attentions=True)
    assert attentions[0].shape == (2, 4, 65, 65)
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="stem='cct' cannot be converted"):
        vh.to_hf(model)


def test_locality_self_attention_masks_the_diagonal_and_learns_its_temperature():
    model = make(lsa=True)
    attn = model.blocks[0].attn
    assert attn.log_scale.item() == pytest.approx(math.log(1 / math.sqrt(8)))  # starts at 1/sqrt(head dim)
    x = torch.randn(2, 3, 16, 16)
    logits, attentions = model(x, return_attentions=True)
    for a in attentions:
        assert torch.all(a.diagonal(dim1=-2, dim2=-1) == 0)  # no token attends to itself
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    assert (model(x) - logits).abs().max().item() < 1e-5  # the SDPA path (boolean mask) agrees
    assert "lsa_mask" not in model.state_dict()  # built from the config, not saved
    logits.sum().backward()
    assert attn.log_scale.grad is not None and attn.log_scale.grad.abs().item() > 0


def test_lsa_temperature_sharpens_attention():
    model = make(lsa=True)
    x = torch.randn(1, 3, 16, 16)
    _, before = model(x, return_attentions=True)
    with torch.no_grad():
        model.blocks[0].attn.log_scale += math.log(4.0)  # 4x the temperature
    _, after = model(x, return_attentions=True)
    entropy = lambda a: -(a.clamp_min(1e-12).log() * a).sum(-1).mean()  # noqa: E731
    assert entropy(after[0]) < entropy(before[0])


def test_sincos_position_embeddings_are_fixed_and_follow_the_formula():
    pe = vh.sincos_position_embedding(4, 8)  # grid 4x4, dim 8: 2 frequencies per axis and function
    assert pe.shape == (1, 17, 8) and torch.equal(pe[0, 0], torch.zeros(8))  # CLS: zeros
    # Patch (row 1, col 2) is token 1 + 1*4 + 2 = 7; frequencies 1 and 1/100.
    expected = torch.tensor([math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01),
                             math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)])
    torch.testing.assert_close(pe[0, 7], expected)
    model = make(pos_embed="sincos")
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed, vh.sincos_position_embedding(4, 32))
    assert vh.count_parameters(model) == vh.count_parameters(make()) - 17 * 32
    # Neighbouring positions are more alike than distant ones; position_similarity is the cosine per pair.
    sim = vh.position_similarity(model)
    assert sim.shape == (4, 4, 4, 4)
    torch.testing.assert_close(sim[1, 2, 1, 2], torch.tensor(1.0))  # each patch with itself
    torch.testing.assert_close(sim, sim.permute(2, 3, 0, 1))  # symmetric
    pos = torch.nn.functional.normalize(model.pos_embed[0, 1:].detach(), dim=-1)
    torch.testing.assert_close(sim[0, 1, 3, 2], pos[1] @ pos[14])  # patch (0, 1) is token 1, (3, 2) is 14
    assert sim[0, 0, 0, 1] > sim[0, 0, 0, 3] and sim[0, 0, 1, 0] > sim[0, 0, 3, 0]


def test_fit_leaves_fixed_position_embeddings_unchanged():
    model = make(pos_embed="sincos")
    before = model.pos_embed.detach().clone()
    data = [(torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))) for _ in range(2)]
    train.fit(model, data, epochs=1, lr=1e-2, compile=False, precision="fp32", progress=False, verbose=False)
    assert torch.equal(model.pos_embed.detach(), before)
    assert not torch.equal(model.cls_token.detach(), torch.zeros_like(model.cls_token))


@pytest.mark.parametrize("overrides", [dict(stem="spt"), dict(stem="cct"), dict(lsa=True), dict(pos_embed="sincos"),
                                       dict(stem="spt", lsa=True, pos_embed="sincos")])
def test_sdpa_and_explicit_paths_agree_with_every_prior(overrides):
    fused = make(**overrides, fused_attn=True)
    explicit = make(**overrides, fused_attn=False)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert (fused(x) - explicit(x)).abs().max().item() < 1e-5


def test_save_and_load_keep_the_priors(tmp_path):
    model = make(stem="spt", lsa=True, pos_embed="sincos")
    loaded, _ = vh.load_model(vh.save_model(model, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.blocks[0].attn.lsa_mask, model.blocks[0].attn.lsa_mask)
    assert loaded.config == model.config and not loaded.pos_embed.requires_grad
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("overrides, error, message", [
    (dict(stem="shifted"), ValueError, "stem must be 'patch'.*'cct'.*'spt'"),
    (dict(stem="cct", patch_size=3, image_size=15), ValueError, "stem='cct' downsamples by 2"),
    (dict(pos_embed="rope"), ValueError, "pos_embed must be 'learned' or 'sincos'"),
    (dict(pos_embed="sincos", dim=30, heads=3), ValueError, "multiple of 4, got 30"),
    (dict(lsa=1), TypeError, "lsa must be True or False"),
])
def test_bad_prior_options_are_named(overrides, error, message):
    with pytest.raises(error, match=message):
        make(**overrides)


def test_to_hf_refuses_what_hf_cannot_express_and_converts_sincos():
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="stem='spt' cannot be converted"):
        vh.to_hf(make(stem="spt"))
    with pytest.raises(ValueError, match="lsa=True .* cannot be converted"):
        vh.to_hf(make(lsa=True))
    model = make(pos_embed="sincos")
    hf = vh.to_hf(model).eval()
    x = torch.randn(2, 3, 16, 16)
    assert (hf(pixel_values=x).logits - model(x)).abs().max().item() < 1e-4
