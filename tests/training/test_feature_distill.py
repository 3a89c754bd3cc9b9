"""Feature distillation from a face-recognition trunk (``loss.feature_from``): targets, projector, runs."""
from __future__ import annotations

import pytest
import torch
from rtfer.errors import InputError
from rtfer.models import create_model
from rtfer.training.config import load_config
from rtfer.training.feature_distill import (GRID, FeatureDistiller, TrunkTargets, build_distiller,
                                            load_feature_teacher, student_features)
from rtfer.training.train import fit, load_checkpoint


@pytest.fixture
def tiny_backbone(tmp_path):
    """An import-backbone file for ``faceres29_tiny`` (random trunk, as ``import-backbone`` writes it)."""
    torch.manual_seed(0)
    src = create_model("faceres29_tiny", input_size=64, head="mid2")
    path = tmp_path / "bb.pt"
    torch.save({"trunk": src.trunk.state_dict(), "provenance": {"pretrained_from": "test"}}, path)
    return path


def _cfg(train, val, out, *overrides):
    return load_config(None, [f"data.train={train}", f"data.val={val}", f"run.out={out}", "data.batch_size=14",
                              "data.eval_batch_size=64", "run.progress=false", "run.threads=1", "optim.sam=false",
                              "model.color=gray", *overrides])


@pytest.mark.parametrize("name", ["ddamfn_tiny", "convnextv2_test"])
def test_student_features_give_the_models_logits_and_a_map(name):
    torch.manual_seed(0)
    model = create_model(name, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, _, feats = student_features(model, x)
        assert torch.allclose(logits, model(x), atol=1e-6)
    assert feats.dim() == 4 and feats.shape[0] == 2
    faceres = create_model("faceres29_tiny", input_size=64, head="mid2").eval()
    assert student_features(faceres, torch.randn(1, 3, 64, 64))[2] is None  # no map exposed: refused by the trainer


def test_targets_are_the_trunks_stage_maps_pooled_and_standardised(tiny_backbone):
    teacher, pre = load_feature_teacher(tiny_backbone, "faceres29_tiny", 64)
    assert pre["size"] == 64 and isinstance(teacher, TrunkTargets) and teacher.stages == (2, 3)
    x = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        maps = teacher.trunk.forward_stages(x)
        want = torch.cat([torch.nn.functional.adaptive_avg_pool2d(maps[i], GRID) for i in (2, 3)], dim=1)
        got = teacher(x)
    assert got.shape == (16, 24, GRID, GRID) and torch.allclose(got, want)  # 8 + 16 channels
    d = FeatureDistiller(teacher, student_channels=8, teacher_channels=24)
    d.fit_scale([x[:8], x[8:]])
    z = d.targets(x)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(24), atol=1e-4)
    live = got.std(dim=(0, 2, 3)) > 0  # a channel that ReLU keeps at 0 everywhere stays 0, not inf
    assert torch.allclose(z.std(dim=(0, 2, 3))[live], torch.ones(int(live.sum())), atol=1e-3)
    assert torch.isfinite(z).all()
    d.train()
    assert d.projector.training and not d.teacher.training  # only the projector trains


def test_the_feature_loss_teaches_a_student(tiny_backbone):
    """A student regressing the targets of fixed faces gets closer to them."""
    torch.manual_seed(0)
    teacher, _ = load_feature_teacher(tiny_backbone, "faceres29_tiny", 64)
    student = create_model("ddamfn_tiny", input_size=64)
    x = torch.rand(16, 3, 64, 64)
    d = FeatureDistiller(teacher, student_channels=student_features(student, x[:2])[2].shape[1], teacher_channels=24)
    d.fit_scale([x])
    opt = torch.optim.Adam([*student.parameters(), *d.projector.parameters()], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = d.loss(x, student_features(student, x)[2])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_the_teacher_sees_the_students_batch_resized_and_renormalised(tiny_backbone, tiny_packed, tmp_path):
    train, val = tiny_packed
    cfg = _cfg(train, val, tmp_path / "x", "model.name=ddamfn_tiny", "model.input_size=32",
               f"loss.feature_from={tiny_backbone}", "loss.feature_arch=faceres29_tiny", "loss.feature_size=64")
    student = create_model("ddamfn_tiny", input_size=32)
    student.default_cfg = {**student.default_cfg, "color": "gray"}
    sample = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    d = build_distiller(cfg, student, sample, torch.device("cpu"))
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (student.default_cfg["mean"], student.default_cfg["std"]))
    teacher, pre = load_feature_teacher(tiny_backbone, "faceres29_tiny", 64)
    t_mean, t_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pre["mean"], pre["std"]))
    up = torch.nn.functional.interpolate(pixels, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        want = teacher((up - t_mean) / t_std)
        got = d.teacher((pixels - mean) / std)
    assert torch.allclose(got, want, atol=1e-5)


def test_pretraining_then_fine_tuning_runs_and_resumes(tiny_backbone, tiny_packed, tmp_path):
    train, val = tiny_packed
    feat = (f"loss.feature_from={tiny_backbone}", "loss.feature_arch=faceres29_tiny", "loss.feature_size=64")
    common = ("model.name=ddamfn_tiny", "model.input_size=32")
    pre = tmp_path / "pre"
    fit(_cfg(train, val, pre, *common, *feat, "loss.target_weight=0", "run.epochs=1"))
    state = torch.load(pre / "last.pt", weights_only=False)
    head = state["feature_head"]
    assert set(head) == {"projector", "mu", "sd"} and head["sd"].min() > 0
    # resuming restores the projector and the standardisation, not fresh ones
    fit(_cfg(train, val, pre, *common, *feat, "loss.target_weight=0", "run.epochs=2", "run.resume=true"))
    resumed = torch.load(pre / "last.pt", weights_only=False)
    assert resumed["epoch"] == 2 and torch.equal(resumed["feature_head"]["mu"], head["mu"])
    # the pretrained student starts a fine-tune with labels (no projector in its checkpoint)
    result = fit(_cfg(train, val, tmp_path / "ft", *common, f"run.init_from={pre / 'last.pt'}", "run.epochs=1"))
    model, ckpt = load_checkpoint(result.out / "best.pt")
    assert ckpt["architecture"] == "ddamfn_tiny" and not any(k.startswith("projector") for k in ckpt["model"])
    # the feature loss beside the label loss, from a trained faceres checkpoint as the teacher
    fit(_cfg(train, val, tmp_path / "teacher", "model.name=faceres29_tiny", "model.input_size=64",
             "model.kwargs={head: mid2}", "run.epochs=1"))
    both = fit(_cfg(train, val, tmp_path / "both", *common, f"loss.feature_from={tmp_path / 'teacher' / 'best.pt'}",
                    "loss.feature_weight=0.5", "run.epochs=1"))
    assert both.best_epoch == 1


def test_bad_feature_settings_are_refused(tiny_backbone, tiny_packed, tmp_path):
    train, val = tiny_packed
    with pytest.raises(InputError, match="nothing to learn"):
        _cfg(train, val, tmp_path / "a", "loss.target_weight=0")
    with pytest.raises(InputError, match="optim.sam"):
        _cfg(train, val, tmp_path / "b", f"loss.feature_from={tiny_backbone}", "optim.sam=true")
    with pytest.raises(InputError, match="does not exist"):
        fit(_cfg(train, val, tmp_path / "c", "model.name=ddamfn_tiny", "model.input_size=32",
                 f"loss.feature_from={tmp_path / 'missing.pt'}", "run.epochs=1"))
    with pytest.raises(InputError, match="exposes no feature map"):
        fit(_cfg(train, val, tmp_path / "d", "model.name=faceres29_tiny", "model.input_size=64",
                 "model.kwargs={head: mid2}", f"loss.feature_from={tiny_backbone}", "loss.feature_arch=faceres29_tiny", "loss.feature_size=64",
                 "run.epochs=1"))
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(InputError, match="neither an import-backbone file nor a training checkpoint"):
        load_feature_teacher(other)
