"""Augmentation, losses and SAM on the tiny registered models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rtfer.models import create_model
from rtfer.training.augment import AugmentConfig, BatchAugment, to_float
from rtfer.training.engine import StepOptions, compute_loss, lr_lambda
from rtfer.training.losses import attention_diversity_loss, class_weights, classification_loss
from rtfer.training.sam import SAM, bn_update


def test_augment_is_seeded_and_shaped():
    x = torch.randint(0, 256, (6, 1, 24, 24), dtype=torch.uint8)
    a = BatchAugment(AugmentConfig(), 32, (0.5,) * 3, (0.5,) * 3, seed=3)
    b = BatchAugment(AugmentConfig(), 32, (0.5,) * 3, (0.5,) * 3, seed=3)
    ya, yb = a(x), b(x)
    assert ya.shape == (6, 3, 32, 32) and torch.equal(ya, yb)
    assert not torch.equal(a(x), ya)  # the generator advances


def test_identity_augment_matches_eval_path():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, rotate=0.0, flip=0.0, brightness=0.0,
                        contrast=0.0, erase_p=0.0)
    y = BatchAugment(cfg, 32, (0.5,) * 3, (0.25,) * 3)(x)
    assert torch.allclose(y, to_float(x, 32, (0.5,) * 3, (0.25,) * 3), atol=1e-5)


def test_flip_only_mirrors():
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, rotate=0.0, flip=1.0, brightness=0.0,
                        contrast=0.0, erase_p=0.0)
    y = BatchAugment(cfg, 16, (0.0,) * 3, (1.0,) * 3)(x)
    assert torch.allclose(y[:, 0], torch.flip(x[:, 0].float() / 255, dims=[2]), atol=1e-5)


def test_classification_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    logp = torch.log_softmax(logits, -1)[0]
    assert classification_loss(logits, torch.tensor([0])).item() == pytest.approx(-logp[0].item(), rel=1e-5)
    smooth = classification_loss(logits, torch.tensor([0]), label_smoothing=0.3).item()
    expected = -((0.7 + 0.1) * logp[0] + 0.1 * logp[1] + 0.1 * logp[2]).item()
    assert smooth == pytest.approx(expected, rel=1e-5)
    soft = classification_loss(logits, torch.tensor([0]), torch.tensor([[0.5, 0.5, 0.0]])).item()
    assert soft == pytest.approx(-(0.5 * logp[0] + 0.5 * logp[1]).item(), rel=1e-5)
    # class weights: the weighted mean over two samples
    two = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    w = torch.tensor([1.0, 3.0, 1.0])
    per = -torch.log_softmax(two, -1)[[0, 1], [0, 0]]
    got = classification_loss(two, torch.tensor([0, 0]), weights=w).item()
    assert got == pytest.approx(per.mean().item(), rel=1e-5)
    got = classification_loss(two, torch.tensor([0, 1]), weights=w).item()
    per = -torch.log_softmax(two, -1)[[0, 1], [0, 1]]
    assert got == pytest.approx(((per[0] * 1 + per[1] * 3) / 4).item(), rel=1e-5)


def test_class_weights_balanced():
    w = class_weights(np.array([10, 30, 0, 60, 0, 0, 0]), "balanced")
    assert w[0] == pytest.approx(100 / (7 * 10)) and w[2] == 0
    assert class_weights(np.ones(7), "none").tolist() == [1.0] * 7


def test_attention_diversity_loss_by_hand():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert attention_diversity_loss([a, b]).item() == pytest.approx(1.0)
    c = torch.full((2, 3), 2.0)
    # pairs: (a,b) 1, (a,c) 4, (b,c) 1 -> 3 / 6
    assert attention_diversity_loss([a, b, c]).item() == pytest.approx(0.5)
    assert attention_diversity_loss([a]).item() == 0.0


def test_lr_schedules():
    exp = lr_lambda("exponential", 3, 10, gamma=0.9)
    assert exp(0) == 1.0 and exp(9) == 1.0 and exp(10) == pytest.approx(0.9) and exp(25) == pytest.approx(0.81)
    cos = lr_lambda("cosine", 2, 10, warmup_epochs=0.5, min_lr_ratio=0.1)
    assert cos(0) == pytest.approx(0.2) and cos(4) == pytest.approx(1.0)
    assert cos(5) == pytest.approx(1.0) and cos(20) == pytest.approx(0.1)
    assert cos(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 15)))


@pytest.mark.parametrize("name,size", [("ddamfn_tiny", 32), ("convnextv2_test", 32)])
def test_sam_step_on_tiny_models(name, size):
    torch.manual_seed(0)
    model = create_model(name, input_size=size)
    model.train()
    opt = SAM(model.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    x = torch.randn(4, 3, size, size)
    y = torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    so = StepOptions(attention_weight=0.1)
    loss, logits = compute_loss(model, x, y, None, so)
    assert logits.shape == (4, 7) and torch.isfinite(loss)
    loss.backward()
    opt.first_step(zero_grad=True)
    perturbed = [p.detach().clone() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, perturbed))
    bn_update(model, False)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        assert all(m.momentum == 0.0 for m in bns)
    loss2, _ = compute_loss(model, x, y, None, so)
    loss2.backward()
    bn_update(model, True)
    if bns:
        assert all(m.momentum == 0.1 for m in bns)
    opt.second_step(zero_grad=True)
    after = list(model.parameters())
    # the step starts from the original weights, not the perturbed ones
    moved = [not torch.equal(a, b.detach()) for a, b in zip(before, after)]
    assert any(moved)
    assert opt.param_groups is opt.base_optimizer.param_groups


def test_sam_rejects_negative_rho():
    with pytest.raises(ValueError):
        SAM([torch.nn.Parameter(torch.zeros(1))], torch.optim.Adam, rho=-1)


def test_mixup_and_cutmix_mix_inputs_and_targets_alike():
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    t = torch.eye(7)[[0, 1]]
    for kind in ("mixup", "cutmix"):
        aug = BatchAugment(AugmentConfig(**{kind: 1.0}), 8, (0, 0, 0), (1, 1, 1), seed=3)
        assert aug.mixing
        xm, tm = aug.mix(x, t)
        assert torch.allclose(tm.sum(1), torch.ones(2))
        # image 0 is zeros, image 1 ones: the share of image 1's pixels in image 0 is the weight of its target
        assert float(xm[0].mean()) == pytest.approx(float(tm[0, 1]), abs=1e-5)
        assert 0 < float(tm[0, 1]) < 1
        if kind == "cutmix":
            assert set(torch.unique(xm).tolist()) <= {0.0, 1.0}  # pasted pixels, not blended
    off = BatchAugment(AugmentConfig(), 8, (0, 0, 0), (1, 1, 1))
    assert not off.mixing and off.mix(x, t)[0] is x


def test_mixed_hard_label_batch_trains_on_the_mixed_distribution():
    model = create_model("convnextv2_test", input_size=32)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    soft = torch.full((4, 7), 1 / 7)
    hard, _ = compute_loss(model, x, y, soft, StepOptions(soft_targets=False))
    mixed, _ = compute_loss(model, x, y, soft, StepOptions(soft_targets=False), mixed=True)
    logits = model(x)
    assert float(mixed.detach()) == pytest.approx(float(-(soft * logits.log_softmax(-1)).sum(-1).mean().detach()), rel=1e-5)
    assert float(hard.detach()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y).detach()), rel=1e-5)


def test_distillation_loss_by_hand():
    from rtfer.training.losses import distillation_loss

    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    p = torch.softmax(t / 2, -1)
    q = torch.log_softmax(s / 2, -1)
    want = float((p * (p.log() - q)).sum()) * 4
    assert float(distillation_loss(s, t, 2.0)) == pytest.approx(want, rel=1e-6)
    assert float(distillation_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_distillation_enters_the_step_loss():
    torch.manual_seed(0)
    student = create_model("convnextv2_test", input_size=32)
    teacher = create_model("convnextv2_test", input_size=32).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    from rtfer.training.losses import distillation_loss

    with torch.no_grad():
        plain, _ = compute_loss(student, x, y, None, StepOptions())
        both, _ = compute_loss(student, x, y, None, StepOptions(teacher=teacher, distill_weight=0.5))
        kd = distillation_loss(student(x), teacher(x), 2.0)
    assert float(both) == pytest.approx(0.5 * float(plain) + 0.5 * float(kd), rel=1e-5)


def test_weight_ema_warms_up_then_uses_its_decay():
    from rtfer.training.engine import ModelEma

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.999, 1/10): the initial weights keep only a tenth
    assert float(ema.module.weight) == pytest.approx(0.9)
    ema.updates = 100_000
    ema.update(model)
    assert float(ema.module.weight) == pytest.approx(0.9 + 0.1 * 0.001)
    ema.restart(model)
    assert float(ema.module.weight) == 1.0 and ema.updates == 0
