"""Explanations: gradient rollout against the paper's formula, the perturbation test on a model whose answer is
known, prefix tokens (DeiT's distillation token, registers), timm and HF models, no hook left behind."""
import pytest
import torch

import vit_helpers as vh
from vitkit import explain


def tiny(**kw):
    torch.manual_seed(0)
    return vh.VisionTransformer(**{**dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=16, depth=3,
                                          heads=2, mlp_dim=32), **kw}).eval()


def chefer_direct(model, image, target):
    """Chefer, Gur & Wolf 2021, eq. (5)-(6), written out for one image with explicit loops over layers and heads:
    A_bar = E_h[(grad_A * A)^+], R = I + sum ... accumulated as R <- R + A_bar R."""
    logits, attentions = model(image[None], return_attentions=True)
    grads = torch.autograd.grad(logits[0, target], attentions)
    T = attentions[0].shape[-1]
    R = torch.eye(T)
    for A, G in zip(attentions, grads):
        heads = A.shape[1]
        A_bar = torch.zeros(T, T)
        for h in range(heads):
            A_bar += torch.clamp(G[0, h] * A[0, h], min=0) / heads
        R = R + A_bar @ R
    return R[0, 1:].reshape(4, 4).detach()


def test_gradient_rollout_matches_the_papers_formula_and_is_batch_aware():
    model = tiny()
    x = torch.randn(3, 3, 16, 16)
    targets = torch.tensor([0, 3, 4])
    maps = explain.explain_gradient_rollout(model, x, target=targets)
    assert maps.shape == (3, 4, 4)
    for i in range(3):
        torch.testing.assert_close(maps[i], chefer_direct(model, x[i], int(targets[i])), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(explain.explain_gradient_rollout(model, x, target=1), maps)  # class-specific
    predicted = model(x).argmax(-1)
    torch.testing.assert_close(explain.explain_gradient_rollout(model, x), explain.explain_gradient_rollout(model, x, predicted))


def test_every_explainer_has_one_calling_convention():
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    for name, explainer in explain.EXPLAINERS.items():
        maps = explainer(model, x, target=1)
        assert maps.shape == (2, 4, 4) and maps.dtype == torch.float32 and torch.isfinite(maps).all(), name
    torch.testing.assert_close(explain.explain_rollout(model, x), vh.attention_rollout(model(x, return_attentions=True)[1]))
    torch.testing.assert_close(explain.explain_random(model, x), explain.explain_random(model, x))  # seeded
    with pytest.raises(ValueError, match=r"target must be None, a class index in \[0, 4\]"):
        explain.explain_gradient_rollout(model, x, target=7)


def test_explainers_use_eval_mode_and_restore_training_mode():
    model = tiny(dropout=0.5)
    x = torch.randn(2, 3, 16, 16)
    model.train()
    for name, explainer in explain.EXPLAINERS.items():
        maps = explainer(model, x, target=1)
        assert model.training, f"{name} left the model in eval mode"
        torch.testing.assert_close(maps, explainer(model, x, target=1))  # no dropout inside: deterministic
    model.eval()
    explain.explain_rollout(model, x)
    assert not model.training


def test_input_x_gradient_sums_each_patch():
    model = tiny()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    logit = model(x)[0, 2]
    (grad,) = torch.autograd.grad(logit, x)
    expected = (grad * x).detach().sum(1)[0].reshape(4, 4, 4, 4).sum(dim=(1, 3))  # (h, p, w, p) -> (h, w)
    torch.testing.assert_close(explain.explain_input_x_gradient(model, x.detach(), target=2)[0], expected,
                               rtol=1e-4, atol=1e-6)


class TopLeftPatch(torch.nn.Module):
    """Class 1 if the top-left 4x4 patch of the 8x8 image is bright, else class 0: known by construction."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        bright = x[:, 0, :4, :4].mean(dim=(1, 2)) > 0.5
        return torch.stack([(~bright).float(), bright.float()], dim=1) + 0 * self.dummy


def test_perturbation_curve_on_a_model_whose_answer_is_known():
    x = torch.zeros(6, 1, 8, 8)
    x[:, :, :4, :4] = 1.0
    labels = torch.ones(6, dtype=torch.long)
    right = torch.tensor([[1.0, 0.3], [0.2, 0.1]]).expand(6, 2, 2)  # the top-left patch ranks first
    wrong = torch.tensor([[0.0, 0.3], [0.2, 0.1]]).expand(6, 2, 2)  # ... and last
    fractions = (0.0, 0.25, 0.5, 0.75)
    pos_right = explain.perturbation_curve(TopLeftPatch(), x, labels, right, fractions=fractions)
    assert pos_right["accuracy"] == [1.0, 0.0, 0.0, 0.0]
    assert pos_right["auc"] == pytest.approx(12.5)  # 100 % x 0.25 / 2
    pos_wrong = explain.perturbation_curve(TopLeftPatch(), x, labels, wrong, fractions=fractions)
    assert pos_wrong["accuracy"] == [1.0, 1.0, 1.0, 1.0] and pos_wrong["auc"] == pytest.approx(75.0)
    neg_right = explain.perturbation_curve(TopLeftPatch(), x, labels, right, fractions=fractions, most_relevant_first=False)
    assert neg_right["accuracy"] == [1.0, 1.0, 1.0, 1.0]


def test_per_image_aucs_average_to_the_auc_and_pair_images_across_maps():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, :4, :4] = 1.0
    labels = torch.ones(4, dtype=torch.long)
    maps = torch.tensor([[[1.0, 0.3], [0.2, 0.1]]]).repeat(4, 1, 1)
    maps[2:, 0, 0] = 0.0  # images 2 and 3: the top-left patch ranks last
    curve = explain.perturbation_curve(TopLeftPatch(), x, labels, maps, fractions=(0.0, 0.25, 0.5, 0.75))
    assert curve["per_image_auc"].tolist() == [12.5, 12.5, 75.0, 75.0]
    assert curve["auc"] == pytest.approx(43.75) and curve["accuracy"] == [1.0, 0.5, 0.5, 0.5]


def test_remove_patches_and_mass_on_mask_exactly():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    maps = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])
    out = explain.remove_patches(x, maps, 0.5, fill=-1.0)
    assert out[0, 0].tolist() == [[-1, -1, -1, -1], [-1, -1, -1, -1], [8, 9, 10, 11], [12, 13, 14, 15]]
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1  # the top-left patch
    assert explain.mass_on_mask(maps, mask).item() == pytest.approx(0.4)  # 4 / (4 + 3 + 2 + 1)
    assert explain.mass_on_mask(torch.ones(1, 2, 2), mask).item() == pytest.approx(0.25)  # uniform: the area


# --- any ViT: HF and timm, prefix tokens, non-square grids, no hooks ----------------------------------------------

def test_hf_vit_and_deit_attentions():
    transformers = pytest.importorskip("transformers")
    cfg = dict(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, num_labels=5)
    torch.manual_seed(0)
    deit = transformers.DeiTForImageClassificationWithTeacher._from_config(transformers.DeiTConfig(**cfg),
                                                                           attn_implementation="eager").eval()
    x = torch.randn(2, 3, 16, 16)
    out = explain.forward_with_attentions(deit, x)
    assert out.num_prefix_tokens == 2 and out.attentions[0].shape == (2, 2, 18, 18) and out.grid_size == (4, 4)
    rollout = explain.explain_rollout(deit, x)
    torch.testing.assert_close(rollout, vh.rollout_matrix(out.attentions)[:, 0, 2:].reshape(2, 4, 4))
    assert explain.explain_gradient_rollout(deit, x, target=1).shape == (2, 4, 4)
    ours = tiny(depth=2, dim=16)
    hf = vh.to_hf(ours)
    torch.testing.assert_close(explain.explain_gradient_rollout(hf, x, 3), explain.explain_gradient_rollout(ours, x, 3),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        explain.explain_rollout(vh.to_hf(ours, attn_implementation="sdpa"), x)


@pytest.mark.parametrize("fused", [True, False])
def test_timm_models_with_prefix_tokens_and_no_hook_left(fused):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    deit = pytest.importorskip("timm.models.deit")
    torch.manual_seed(0)
    common = dict(patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=5)
    models = {
        "deit distilled": (deit.VisionTransformerDistilled(img_size=16, **common), 2, (4, 4)),
        "registers": (timm_vit.VisionTransformer(img_size=16, reg_tokens=4, **common), 5, (4, 4)),
        "non-square": (timm_vit.VisionTransformer(img_size=(16, 24), **common), 1, (4, 6)),
    }
    for name, (model, prefix, grid) in models.items():
        model.eval()
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused
        x = torch.randn(2, 3, 16, grid[1] * 4)
        with torch.no_grad():
            reference = model(x)
            out = explain.forward_with_attentions(model, x)
        torch.testing.assert_close(out.logits, reference, rtol=1e-4, atol=1e-5)  # same function
        assert out.num_prefix_tokens == prefix and out.grid_size == grid, name
        T = prefix + grid[0] * grid[1]
        assert all(a.shape == (2, 2, T, T) for a in out.attentions)
        assert explain.explain_gradient_rollout(model, x).shape == (2, *grid)
        assert explain.explain_rollout(model, x).shape == (2, *grid)
        for m in model.modules():
            assert "forward" not in m.__dict__  # nothing left patched
            assert not m._forward_hooks and not m._forward_pre_hooks  # and no hook registered


def test_explain_and_the_perturbation_test_name_bad_input():
    from conftest import tiny_vit
    model, x = tiny_vit().eval(), torch.rand(3, 1, 16, 16)
    with pytest.raises(TypeError, match=r"target must be class indices .* got 'cat'; map a class name"):
        explain.explain("rollout", model, x, target="cat")
    with pytest.raises(ValueError, match="target has 2 entries for a batch of 3 images"):
        explain.explain("rollout", model, x, target=[0, 1])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\]"):
        explain.explain("gradient rollout", model, x, target=7)
    with pytest.raises(ValueError, match=r"x must be a non-empty batch"):
        explain.explain("rollout", model, x[:0])
    with pytest.raises(TypeError, match=r"x must be a batch tensor .* torch.stack"):
        explain.explain("rollout", model, list(x))
    maps = explain.explain("rollout", model, x, target=[0, 1, 2])
    assert maps.shape == (3, 2, 2)
    labels = torch.tensor([0, 1, 2])
    curve = explain.perturbation_curve(model, x, labels, maps, fractions=(f for f in (0.0, 0.5, 1.0)))
    assert curve["fractions"] == [0.0, 0.5, 1.0] and len(curve["accuracy"]) == 3  # a generator, used once
    with pytest.raises(ValueError, match="at least two increasing shares"):
        explain.perturbation_curve(model, x, labels, maps, fractions=[0.5])
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\]"):
        explain.perturbation_curve(model, x, torch.tensor([0, 1, 9]), maps)
