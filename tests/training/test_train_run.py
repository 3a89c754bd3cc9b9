"""Short end-to-end runs of the training loop on synthetic data: completion, resume, evaluate and Grad-CAM."""
from __future__ import annotations

import json

import numpy as np
import torch
from rtfer.training.__main__ import main
from rtfer.training.config import load_config
from rtfer.training.train import fit, load_checkpoint


def _cfg(train, val, out, *overrides):
    return load_config(None, [f"data.train={train}", f"data.val={val}", f"run.out={out}", "data.batch_size=14",
                              "data.eval_batch_size=64", "run.progress=false", "run.threads=1", *overrides])


def test_two_epoch_ddamfn_tiny_run_with_options(tiny_packed, tmp_path):
    train, val = tiny_packed
    out = tmp_path / "run"
    cfg = _cfg(train, val, out, "model.name=ddamfn_tiny", "model.input_size=32", "model.color=gray", "run.epochs=2",
               "optim.sam=true", "data.soft_targets=true", "data.weighted_sampling=true",
               "loss.class_weights=balanced", "run.ema=true", "run.ema_decay=0.5", "run.tta_flip=true",
               "run.select_metric=accuracy")
    result = fit(cfg)
    for name in ("config.yaml", "best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "curves.png", "val.json",
                 "val.md", "val_confusion.png", "val_logits.npz"):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and 1 <= result.best_epoch <= 2
    model, ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["architecture"] == "ddamfn_tiny" and ckpt["arch_kwargs"] == {"input_size": 32}
    assert model.default_cfg["color"] == "gray"
    with np.load(out / "val_logits.npz") as z:
        assert z["logits"].shape == (28, 7)
    # CLI evaluate and gradcam on the selected checkpoint
    assert main(["evaluate", str(out / "best.pt"), str(val), "-o", str(tmp_path / "ev"), "--split", "v"]) == 0
    report = json.loads((tmp_path / "ev" / "v.json").read_text())
    assert report["classification"]["count"] == 28
    assert main(["gradcam", str(out / "best.pt"), str(val), "-o", str(tmp_path / "cam.png"), "--per-class", "2"]) == 0
    assert (tmp_path / "cam.png").stat().st_size > 1000


def test_resume_matches_an_uninterrupted_run(tiny_packed, tmp_path):
    train, val = tiny_packed
    common = ("model.name=convnextv2_test", "model.input_size=32", "optim.optimizer=adamw", "optim.lr=3e-3",
              "optim.sam=false", "optim.scheduler=cosine")
    straight = fit(_cfg(train, val, tmp_path / "a", *common, "run.epochs=2"))
    fit(_cfg(train, val, tmp_path / "b", *common, "run.epochs=2", "run.time_budget_min=0.0001"))  # stops after 1
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1
    resumed = fit(_cfg(train, val, tmp_path / "b", *common, "run.epochs=2", "run.resume=true"))
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val["accuracy"] == straight.val["accuracy"]


def test_cli_train_rejects_unknown_key(tiny_packed, capsys):
    train, val = tiny_packed
    assert main(["train", "--train", str(train), "--val", str(val), "--set", "optim.rhoo=0.1"]) == 2
    assert "did you mean 'optim.rho'" in capsys.readouterr().err


def test_init_from_checkpoint(tiny_packed, tmp_path):
    import pytest

    from rtfer.errors import InputError

    train, val = tiny_packed
    common = ("model.name=convnextv2_test", "model.input_size=32", "optim.sam=false", "run.epochs=1")
    fit(_cfg(train, val, tmp_path / "a", *common))
    first = torch.load(tmp_path / "a" / "best.pt", weights_only=False)["model"]
    # lr 0: weights stay those of the first run
    fit(_cfg(train, val, tmp_path / "b", *common, "optim.lr=0", f"run.init_from={tmp_path / 'a' / 'best.pt'}"))
    second = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(first[k], second[k]) for k in first if first[k].dtype.is_floating_point
               and "running" not in k)
    with pytest.raises(InputError, match="holds a 'convnextv2_test' model"):
        fit(_cfg(train, val, tmp_path / "c", "model.name=ddamfn_tiny", "model.input_size=32", "run.epochs=1",
                 f"run.init_from={tmp_path / 'a' / 'best.pt'}"))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["import-reference", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "b")]) == 2
    assert main(["evaluate", str(tmp_path / "missing.pt"), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("python -m rtfer.training: error:") for line in err)


def test_init_from_a_bundle_member_onnx(tiny_packed, tiny_bundle, tmp_path):
    """A later session without the run folders continues from the shipped bundle's ONNX member."""
    import pytest

    from rtfer.backends.torch import read_onnx_weights
    from rtfer.errors import InputError

    train, val = tiny_packed
    onnx_path = tiny_bundle / "convnext.onnx"
    common = ("model.name=convnextv2_test", "model.input_size=64", "optim.sam=false", "run.epochs=1", "optim.lr=0",
              "run.ema=false")
    fit(_cfg(train, val, tmp_path / "b", *common, f"run.init_from={onnx_path}"))
    got = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model"]
    want = read_onnx_weights(onnx_path)
    assert want and all(np.array_equal(got[k].numpy(), want[k]) for k in want if "running" not in k)
    with pytest.raises(InputError, match="is a 'ddamfn_tiny' member, not 'convnextv2_test'"):
        fit(_cfg(train, val, tmp_path / "c", *common, f"run.init_from={tiny_bundle / 'ddamfn.onnx'}"))


def test_distillation_from_a_checkpoint_and_mismatched_teacher(tiny_packed, tmp_path):
    import pytest

    from rtfer.errors import InputError

    train, val = tiny_packed
    common = ("model.input_size=32", "optim.sam=false", "run.epochs=1", "model.color=gray")
    fit(_cfg(train, val, tmp_path / "teacher", "model.name=convnextv2_test", *common))
    teacher = tmp_path / "teacher" / "best.pt"
    result = fit(_cfg(train, val, tmp_path / "student", "model.name=ddamfn_tiny", *common,
                      f"loss.distill_from={teacher}", "loss.distill_weight=0.7"))
    assert result.best_epoch == 1
    cfg = json.loads(json.dumps(load_config(tmp_path / "student" / "config.yaml").to_dict()))
    assert cfg["loss"]["distill_from"] == str(teacher) and cfg["loss"]["distill_weight"] == 0.7
    with pytest.raises(InputError, match="distillation teacher"):  # colour differs: the batch cannot be shared
        fit(_cfg(train, val, tmp_path / "bad", "model.name=ddamfn_tiny", "model.input_size=32", "optim.sam=false",
                 "run.epochs=1", "model.color=rgb", f"loss.distill_from={teacher}"))


def test_a_teacher_of_another_input_size_sees_the_batch_resized(tiny_packed, tmp_path):
    """A member trained on 48 px faces upsampled to 144 px teaches a 48 px student: the student's batch is resized
    for it the way training resizes (bilinear), and the run trains."""
    from rtfer.training.train import ResizedInput, load_teacher

    from rtfer.models import create_model

    train, val = tiny_packed
    common = ("optim.sam=false", "run.epochs=1", "model.color=gray")
    fit(_cfg(train, val, tmp_path / "teacher", "model.name=convnextv2_test", "model.input_size=64", *common))
    teacher_ckpt = tmp_path / "teacher" / "best.pt"
    result = fit(_cfg(train, val, tmp_path / "student", "model.name=ddamfn_tiny", "model.input_size=32", *common,
                      f"loss.distill_from={teacher_ckpt}"))
    assert result.best_epoch == 1
    cfg = load_config(tmp_path / "student" / "config.yaml")
    student = create_model("ddamfn_tiny")
    student.default_cfg = {**student.default_cfg, "input_size": 32, "color": "gray"}
    teacher = load_teacher(cfg, student, torch.device("cpu"), channels_last=False)
    assert isinstance(teacher, ResizedInput) and teacher.size == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = teacher.model(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        assert torch.allclose(teacher(x), want)
    # another normalisation too (dlib's members): the pixels the teacher sees are the ones the student saw
    pixels = torch.rand(2, 3, 64, 64)
    mean, std, to_mean, to_std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), (0.48, 0.46, 0.41), (1.0, 1.0, 1.0)
    seen = []
    probe = ResizedInput(lambda t: seen.append(t) or t, 64, mean, std, to_mean, to_std)
    probe((pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    want = (pixels - torch.tensor(to_mean).view(1, 3, 1, 1)) / torch.tensor(to_std).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], want, atol=1e-6)


def test_curves_command_plots_several_runs(tmp_path, capsys):
    for name, accs in (("ddamfn", [0.5, 0.6, 0.7]), ("convnextv2", [0.55, 0.72])):
        d = tmp_path / name
        d.mkdir()
        rows = [{"epoch": i + 1, "val_accuracy": a, "val_mean_class_accuracy": a - 0.2, "epoch_seconds": 60.0}
                for i, a in enumerate(accs)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    assert main(["curves", str(tmp_path / "ddamfn"), str(tmp_path / "convnextv2"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["curves", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert "nothing/metrics.jsonl does not exist" in capsys.readouterr().err
