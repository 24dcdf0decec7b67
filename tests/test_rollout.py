import pytest
import torch

import vit_helpers as vh


def uniform(B, H, T, layers):
    return tuple(torch.full((B, H, T, T), 1.0 / T) for _ in range(layers))


def test_identity_attention_gives_uniform_zero_map():
    T = 17
    eye = torch.eye(T).expand(2, 3, T, T)
    result = vh.rollout_matrix((eye, eye))
    torch.testing.assert_close(result, torch.eye(T).expand(2, T, T))  # nothing flows between tokens
    mask = vh.attention_rollout((eye, eye))
    assert mask.shape == (2, 4, 4) and torch.equal(mask, torch.zeros(2, 4, 4))


@pytest.mark.parametrize("layers", [1, 2, 5])
def test_uniform_attention_gives_known_constant(layers):
    # ((U + I) / 2)^L = 2^-L I + (1 - 2^-L) U, so every CLS -> patch entry is (1 - 2^-L) / T.
    T = 10
    mask = vh.attention_rollout(uniform(1, 2, T, layers), grid_size=(3, 3))
    torch.testing.assert_close(mask, torch.full((1, 3, 3), (1 - 2.0 ** -layers) / T))


def test_single_layer_by_hand():
    # T = 5 (CLS + 2x2 patches), 2 heads; mean fusion, + I, row-normalise; CLS row computed by hand.
    h0 = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    h1 = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    attn = torch.eye(5).repeat(1, 2, 1, 1)  # other rows do not matter for a single layer
    attn[0, 0, 0], attn[0, 1, 0] = h0, h1
    # fused CLS row = [0.4, 0.15, 0.15, 0.15, 0.15]; + I -> [1.4, 0.15, ...]; sum 2 -> [0.7, 0.075, ...]
    mask = vh.attention_rollout((attn,))
    torch.testing.assert_close(mask, torch.full((1, 2, 2), 0.075))
    # max: [0.6, 0.2, 0.2, 0.2, 0.2] + I -> sum 2.4; min: [0.2, 0.1, 0.1, 0.1, 0.1] + I -> sum 1.6
    torch.testing.assert_close(vh.attention_rollout((attn,), head_fusion="max"), torch.full((1, 2, 2), 0.2 / 2.4))
    torch.testing.assert_close(vh.attention_rollout((attn,), head_fusion="min"), torch.full((1, 2, 2), 0.1 / 1.6))


def test_later_layers_multiply_on_the_left():
    torch.manual_seed(0)
    a1, a2 = (torch.rand(1, 1, 5, 5).softmax(-1) for _ in range(2))
    norm = lambda a: (a[:, 0] + torch.eye(5)) / 2  # noqa: E731  rows of a + I sum to 2
    expected = norm(a2) @ norm(a1)
    torch.testing.assert_close(vh.rollout_matrix((a1, a2)), expected)
    assert not torch.allclose(expected, norm(a1) @ norm(a2))  # the order matters for this example


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rows_sum_to_one_before_cls_row_is_taken(fusion, discard):
    torch.manual_seed(1)
    attentions = tuple(torch.rand(3, 4, 50, 50).softmax(-1) for _ in range(4))
    result = vh.rollout_matrix(attentions, fusion, discard)
    torch.testing.assert_close(result.sum(-1), torch.ones(3, 50))
    assert (result >= 0).all()


def discard_by_hand(fused, n):
    """The discard step written out: per sample, zero the n smallest of the T*T entries, never CLS -> CLS."""
    kept = fused.clone()
    for sample in kept:
        flat = sample.view(-1)
        order = sorted(range(1, flat.numel()), key=lambda i: flat[i].item())  # index 0 (CLS -> CLS) protected
        flat[order[:n]] = 0
    return kept


@pytest.mark.parametrize("ratio, n", [(0.2, 5), (0.8, 20)])  # both selection branches (drop / keep side)
def test_discard_zeroes_lowest_fraction_per_sample_and_protects_cls(ratio, n):
    T = 5
    fused = torch.arange(1.0, T * T + 1).reshape(1, T, T).repeat(2, 1, 1) / 100
    fused[0, 0, 0] = 0.001  # sample 0: CLS -> CLS is the smallest entry, and must survive
    fused[1] = fused[1].flip(-1)  # sample 1: another ranking, so selection must be per sample
    probs = fused / fused.sum(-1, keepdim=True)
    kept = discard_by_hand(probs, n)
    assert kept[0, 0, 0] == probs[0, 0, 0] > 0 and int((kept == 0).sum()) == 2 * n
    # one layer, one head: rollout discards, adds the identity for the residual path and renormalises the rows
    expected = kept + torch.eye(T)
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(vh.rollout_matrix((probs[:, None],), discard_ratio=ratio), expected)


def test_discard_changes_the_map():
    torch.manual_seed(2)
    attentions = tuple(torch.rand(1, 2, 17, 17).softmax(-1) for _ in range(3))
    assert not torch.allclose(vh.attention_rollout(attentions), vh.attention_rollout(attentions, discard_ratio=0.9))


def test_non_square_grid():
    mask = vh.attention_rollout(uniform(2, 1, 7, 2), grid_size=(2, 3))
    assert mask.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="square grid.*grid_size"):
        vh.attention_rollout(uniform(2, 1, 7, 2))
    with pytest.raises(ValueError, match="holds 4 patches"):
        vh.attention_rollout(uniform(2, 1, 7, 2), grid_size=(2, 2))


def test_model_attentions_work_and_are_not_rescaled():
    torch.manual_seed(0)
    model = vh.VisionTransformer(image_size=16, patch_size=4, in_channels=3, num_classes=2, dim=16, depth=2, heads=2,
                                 mlp_dim=32).eval()
    _, attentions = model(torch.randn(2, 3, 16, 16), return_attentions=True)
    mask = vh.attention_rollout(attentions)
    assert mask.shape == (2, 4, 4)
    assert mask.max().item() < 1.0 and mask.sum(dim=(1, 2)).max().item() < 1.0  # raw mass, not scaled to [0, 1]


@pytest.mark.parametrize("attentions, kwargs, error, message", [
    ((), {}, ValueError, "empty"),
    ([], {}, ValueError, "empty"),
    ((torch.rand(1, 2, 5, 5), torch.rand(1, 2, 10, 10)), {}, ValueError, "inconsistent shapes"),
    ((torch.randn(1, 2, 5, 5),), {}, ValueError, "not a set of attention probabilities: it holds negative"),
    ((torch.rand(1, 2, 5, 5).softmax(-1).log(),), {}, ValueError, "not raw scores or log-probabilities"),
    ((torch.rand(1, 2, 5, 5) + 1,), {}, ValueError, "rows sum to"),
    ((torch.full((1, 2, 5, 5), float("nan")),), {}, ValueError, "NaN or inf"),
    ((torch.ones(1, 2, 5, 5, dtype=torch.long),), {}, TypeError, "dtype torch.int64"),
    ((torch.rand(2, 5, 5),), {}, ValueError, r"\(B, heads, T, T\)"),
    (torch.rand(1, 2, 5, 5), {}, TypeError, "tuple/list"),
    ((None,), {}, TypeError, "eager"),
    ((torch.rand(1, 2, 5, 5).softmax(-1),), dict(head_fusion="median"), ValueError, "unknown head_fusion 'median'"),
    ((torch.rand(1, 2, 5, 5).softmax(-1),), dict(discard_ratio=1.0), ValueError, r"discard_ratio must be in \[0, 1\)"),
    ((torch.rand(1, 2, 5, 5).softmax(-1),), dict(discard_ratio=-0.1), ValueError, "discard_ratio"),
])
def test_bad_attentions_raise(attentions, kwargs, error, message):
    with pytest.raises(error, match=message):
        vh.attention_rollout(attentions, **kwargs)


def test_cls_attention_map_is_the_raw_cls_row():
    attn = torch.full((1, 2, 5, 5), 0.2)  # uniform rows, but for the CLS rows below
    attn[0, 0, 0] = torch.tensor([0.2, 0.1, 0.2, 0.3, 0.2])
    attn[0, 1, 0] = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])
    first = torch.rand(1, 2, 5, 5).softmax(-1)
    m = vh.cls_attention_map((first, attn))  # last layer by default
    torch.testing.assert_close(m, torch.tensor([[[0.1, 0.15], [0.2, 0.15]]]))
    torch.testing.assert_close(vh.cls_attention_map((first, attn), head_fusion="max"), torch.tensor([[[0.1, 0.2], [0.3, 0.2]]]))
    torch.testing.assert_close(vh.cls_attention_map((first, attn), layer=0), first.mean(1)[:, 0, 1:].reshape(1, 2, 2))
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        vh.cls_attention_map((first, attn), layer=2)
