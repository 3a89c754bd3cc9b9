"""One preprocessing: the runtime (rtfer.bundle.preprocess, numpy/OpenCV) and the training evaluation path
(rtfer.training.augment.to_float, torch) must feed a member the same tensor for the same aligned face.

Checked on real aligned crops (the six faces of insightface's group photo, detected with CenterFace and aligned with
the default bundle's template), in the three situations that occur:
- crops aligned at the member's input size (the pipeline always aligns at each member's size; FER2013 members train
  on 48 px images and run on 48 px crops): identical up to float rounding;
- upscaling (RAF-DB's 100 px images into a 112 px member): within 1.5 grey levels (OpenCV's fixed-point filter);
- downscaling (the Python API given larger crops): OpenCV's area filter against torch's antialiased bilinear filter,
  a stated tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rtfer.bundle import MemberSpec, preprocess  # noqa: E402
from rtfer.training.augment import to_float  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def aligned(group_photo):
    """{size: (n, size, size, 3) uint8 RGB} for the group photo's faces, aligned with the default template."""
    from rtfer.bundle import BundleSpec, resolve_bundle_path
    from rtfer.detection import create_detector
    from rtfer.detection.align import align_faces

    template = BundleSpec.read(resolve_bundle_path("default")).alignment_template
    faces = create_detector("centerface").detect(group_photo)
    assert len(faces) >= 5
    return {s: align_faces(group_photo, faces.landmarks, s, template)[0] for s in (48, 100, 112)}


def _member(size: int, color: str) -> MemberSpec:
    return MemberSpec(name="m", file="m.onnx", architecture="x", arch_kwargs={}, input_size=size, mean=MEAN, std=STD,
                      color=color, sha256="", temperature=1.0)


def _training(crops: np.ndarray, size: int, gray: bool) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))
    return to_float(x, size, MEAN, STD, gray).numpy()


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_same_tensor_at_the_member_size(aligned, color):
    crops = aligned[48]
    runtime = preprocess(crops, _member(48, color))
    train = _training(crops, 48, color == "gray")
    assert runtime.shape == train.shape == (len(crops), 3, 48, 48)
    np.testing.assert_allclose(runtime, train, atol=1e-5)


def test_upscaling_agrees_within_uint8_rounding(aligned):
    runtime = preprocess(aligned[100], _member(112, "rgb"))
    train = _training(aligned[100], 112, False)
    # the runtime resizes the uint8 crop with OpenCV's fixed-point bilinear filter (rounded to whole grey levels),
    # training resizes floats: at most 1.5 grey levels apart (measured: 0.75 at most, 0.26 on average)
    diff = np.abs(runtime - train) * np.asarray(STD, np.float32).reshape(1, 3, 1, 1) * 255
    assert diff.max() < 1.5 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_downscaling_agrees_within_the_stated_tolerance(aligned):
    runtime = preprocess(aligned[112], _member(48, "gray"))
    train = _training(aligned[112], 48, True)
    diff = np.abs(runtime - train)
    # stated tolerance: mean |difference| under 0.05 and 99th percentile under 0.25 normalised units (a unit is one
    # std of the pixel values, ~57 grey levels), i.e. under ~3 and ~14 grey levels: both are low-pass filters
    assert diff.mean() < 0.05 and np.percentile(diff, 99) < 0.25, (diff.mean(), np.percentile(diff, 99))
    # and a shifted crop is far outside that tolerance, so the check can fail
    shifted = _training(np.roll(aligned[112], 6, axis=2), 48, True)
    assert np.abs(runtime - shifted).mean() > 2 * diff.mean()


def test_members_that_preprocess_alike_share_one_batch(aligned, monkeypatch, tmp_path):
    """Two members that both take 48 px grey crops with the same mean/std (the default bundle's DDAMFN twice, as the
    0.5.0 default's pair did): one preprocessing for both, and the same probabilities as preprocessing for each."""
    import json
    import shutil

    import rtfer.bundle as bundle_module

    src = bundle_module.resolve_bundle_path("default")
    meta = json.loads((src / bundle_module.BUNDLE_FILE).read_text())
    ddamfn = next(m for m in meta["members"] if m["name"] == "ddamfn")
    ddamfn.pop("int8", None)
    meta["members"] = [dict(ddamfn, name="a"), dict(ddamfn, name="b", temperature=1.5)]
    meta["ensemble"] = {"method": "soft_vote", "weights": [0.5, 0.5]}
    for key in ("combiners", "quantization"):
        meta.pop(key, None)
    shutil.copyfile(src / ddamfn["file"], tmp_path / ddamfn["file"])
    (tmp_path / bundle_module.BUNDLE_FILE).write_text(json.dumps(meta))
    bundle = bundle_module.load_bundle(tmp_path, backend="onnxruntime", device="cpu", precision="fp32")
    sizes = {(m.input_size, m.color, tuple(m.mean), tuple(m.std)) for m in bundle.members}
    assert len(bundle.members) == 2 and len(sizes) == 1
    crops = {48: aligned[48]}
    calls = []
    real = bundle_module.preprocess
    monkeypatch.setattr(bundle_module, "preprocess", lambda c, m: calls.append(m.name) or real(c, m))
    shared = bundle.member_probs(crops)
    assert len(calls) == 1
    for k, m in enumerate(bundle.members):
        expected = bundle_module.softmax(bundle.backends[k].infer(real(crops[48], m)), m.temperature)
        np.testing.assert_allclose(shared[k], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("crops", [np.full((1, 48, 48, 3), 0.5, np.float32), np.full((1, 48, 48, 3), np.nan),
                                   np.zeros((1, 48, 48, 3), np.int64)])
def test_crops_that_are_not_uint8_are_refused(crops):
    """Floats in 0..1 would be read as near-black faces (and NaN quantised to 0 by INT8 members), each with a
    confident answer: the runtime takes uint8 crops only."""
    with pytest.raises(ValueError, match=r"^faces must be uint8 RGB crops \(values 0-255\), got "):
        preprocess(crops, _member(48, "gray"))
