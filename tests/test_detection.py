"""Face detectors: CenterFace on real faces, SCRFD decoding on a tiny synthetic ONNX model, registry and options."""
from __future__ import annotations

import numpy as np
import pytest

from rtfer.detection import DETECTORS, create_detector, detector_class
from rtfer.detection.base import nms
from rtfer.errors import BackendError
from rtfer.types import Faces


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def centerface():
    return create_detector("centerface")


@pytest.fixture(scope="module")
def group_faces(centerface, group_photo):
    return centerface.detect(group_photo)


def test_registry_names_and_unknown_name():
    assert set(DETECTORS) == {"centerface", "scrfd"}
    assert detector_class("centerface").name == "centerface"
    with pytest.raises(BackendError, match="unknown detector"):
        create_detector("yolo")


def test_unknown_option_is_rejected_with_a_suggestion():
    with pytest.raises(TypeError, match="det_width"):
        create_detector("centerface", det_witdh=320)


def test_centerface_finds_the_six_faces_of_the_group_photo(group_faces):
    faces = group_faces
    assert isinstance(faces, Faces)
    assert len(faces) >= 5
    assert (faces.scores >= 0.5).all()
    assert (faces.track_ids == -1).all()
    for box, lm in zip(faces.xyxy, faces.landmarks):
        assert (lm[:, 0] >= box[0]).all() and (lm[:, 0] <= box[2]).all()
        assert (lm[:, 1] >= box[1]).all() and (lm[:, 1] <= box[3]).all()
        assert lm[0, 0] < lm[1, 0]  # left eye (as seen) before right eye
        assert lm[3, 0] < lm[4, 0]  # left mouth corner before right
        assert lm[2, 1] > lm[:2, 1].min() and lm[3:, 1].min() > lm[:2, 1].max()  # eyes above nose above mouth


def test_timings_exclude_loading(centerface, group_photo):
    centerface.detect(group_photo)
    assert set(centerface.timings_ms) == {"preprocess", "infer", "postprocess"}
    assert centerface.timings_ms["infer"] < 2000


def test_blank_image_returns_empty_faces(centerface):
    faces = centerface.detect(np.zeros((240, 320, 3), np.uint8))
    assert len(faces) == 0
    assert faces.xyxy.shape == (0, 4) and faces.landmarks.shape == (0, 5, 2) and faces.scores.shape == (0,)


def test_gray_input_is_accepted(centerface, group_photo):
    import cv2

    faces = centerface.detect(cv2.cvtColor(group_photo, cv2.COLOR_BGR2GRAY))
    assert len(faces) >= 4


def _mosaic(image: np.ndarray, faces: Faces, n: int = 50, tile: int = 96, cols: int = 10) -> np.ndarray:
    import cv2

    crops = []
    for box in faces.xyxy:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = 0.8 * max(box[2] - box[0], box[3] - box[1])
        x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
        x2, y2 = int(min(image.shape[1], cx + half)), int(min(image.shape[0], cy + half))
        crops.append(cv2.resize(image[y1:y2, x1:x2], (tile, tile), interpolation=cv2.INTER_AREA))
    rows = -(-n // cols)
    out = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = crops[i % len(crops)]
    return out


def test_fifty_face_mosaic_is_capped_by_max_faces(centerface, group_photo, group_faces):
    mosaic = _mosaic(group_photo, group_faces)  # 960x480, 50 faces of ~60 px
    faces = centerface.detect(mosaic)
    assert 20 < len(faces) <= centerface.options.max_faces
    capped = create_detector("centerface", max_faces=10).detect(mosaic)
    assert len(capped) == 10
    np.testing.assert_allclose(np.sort(capped.scores)[::-1], np.sort(faces.scores)[::-1][:10], atol=1e-6)


def test_det_width_downscaling_returns_full_frame_coordinates(group_photo, group_faces):
    full = create_detector("centerface", det_width=group_photo.shape[1])  # 1280: no downscaling
    ref = full.detect(group_photo)
    small = create_detector("centerface", det_width=320).detect(group_photo)
    for faces in (group_faces, small):  # det_width 640 and 320
        assert len(faces) >= 5
        for box, lm in zip(faces.xyxy, faces.landmarks):
            ious = [_iou(box, r) for r in ref.xyxy]
            j = int(np.argmax(ious))
            assert ious[j] > 0.6, (box, ref.xyxy[j])
            side = ref.xyxy[j, 2] - ref.xyxy[j, 0]
            assert np.abs(lm - ref.landmarks[j]).max() < 0.2 * side


def test_min_face_drops_small_boxes(group_photo):
    faces = create_detector("centerface", min_face=120).detect(group_photo)
    sides = np.minimum(faces.xyxy[:, 2] - faces.xyxy[:, 0], faces.xyxy[:, 3] - faces.xyxy[:, 1])
    assert (sides >= 120).all()
    assert len(faces) < 6


def test_nms_keeps_highest_and_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keep = nms(boxes, np.array([0.6, 0.9, 0.8], np.float32), 0.4)
    assert keep.tolist() == [1, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).size == 0


# --------------------------------------------------------------------------- SCRFD

def _synthetic_scrfd(path, size: int = 64) -> None:
    """A 9-output SCRFD-shaped model for a fixed size x size input that emits constants: one face at stride 16
    (cell row 1, col 2, anchor 1, score 0.9) and one weak candidate at stride 8 (row 6, col 1, anchor 0, 0.3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    outs, nodes, inits = [], [], []
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0))
    nodes.append(helper.make_node("Mul", ["mean", "zero"], ["z"]))
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    data = {}
    for i, stride in enumerate((8, 16, 32)):
        n = (size // stride) ** 2 * 2
        data[i] = np.zeros((n, 1), np.float32)
        data[i + 3] = np.zeros((n, 4), np.float32)
        data[i + 6] = np.zeros((n, 10), np.float32)
    k = (1 * 4 + 2) * 2 + 1
    data[1][k] = 0.9
    data[4][k] = [1.0, 0.5, 1.5, 2.0]
    data[7][k] = np.array([[-0.5, 0.2], [0.5, 0.2], [0.0, 0.8], [-0.4, 1.4], [0.4, 1.4]]).reshape(-1)
    k8 = (6 * 8 + 1) * 2
    data[0][k8] = 0.3
    data[3][k8] = [0.5, 0.5, 3.0, 1.5]
    data[6][k8] = np.arange(10) * 0.1
    for j in range(9):
        inits.append(numpy_helper.from_array(data[j], f"c{j}"))
        nodes.append(helper.make_node("Add", [f"c{j}", "z"], [f"out{j}"]))
        outs.append(helper.make_tensor_value_info(f"out{j}", TensorProto.FLOAT, list(data[j].shape)))
    graph = helper.make_graph(nodes, "scrfd_synthetic",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# Expected decoding at detection scale: centre (32, 16), distances x16.
FACE_BOX = np.array([16.0, 8.0, 56.0, 48.0])
FACE_KPS = np.array([[32 - 8, 16 + 3.2], [32 + 8, 16 + 3.2], [32, 16 + 12.8], [32 - 6.4, 16 + 22.4],
                     [32 + 6.4, 16 + 22.4]])


@pytest.fixture(scope="module")
def scrfd_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("scrfd") / "det_500m.onnx"
    _synthetic_scrfd(path)
    return path


def test_scrfd_decodes_anchors_at_detection_scale(scrfd_model):
    det = create_detector("scrfd", model_path=str(scrfd_model), det_width=64, min_face=1)
    faces = det.detect(np.zeros((64, 64, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces.xyxy[0], FACE_BOX, atol=1e-4)
    np.testing.assert_allclose(faces.landmarks[0], FACE_KPS, atol=1e-4)
    assert faces.scores[0] == pytest.approx(0.9)


def test_scrfd_low_threshold_keeps_the_weak_stride8_candidate(scrfd_model):
    det = create_detector("scrfd", model_path=str(scrfd_model), det_width=64, min_face=1, score_threshold=0.2)
    faces = det.detect(np.zeros((64, 64, 3), np.uint8))
    assert len(faces) == 2
    weak = faces[int(np.argmin(faces.scores))]
    np.testing.assert_allclose(weak.xyxy[0], [8 - 4, 48 - 4, 8 + 24, 48 + 12], atol=1e-4)
    np.testing.assert_allclose(weak.landmarks[0], np.array([8.0, 48.0]) + (np.arange(10) * 0.8).reshape(5, 2),
                               atol=1e-4)


def test_scrfd_maps_downscaled_padded_detections_to_full_frame(scrfd_model):
    # 128x112 frame -> 64x56 at det_width 64 -> padded to 64x64 (the synthetic model's fixed input)
    det = create_detector("scrfd", model_path=str(scrfd_model), det_width=64, min_face=1)
    faces = det.detect(np.zeros((112, 128, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces.xyxy[0], FACE_BOX * 2, atol=1e-3)
    np.testing.assert_allclose(faces.landmarks[0], FACE_KPS * 2, atol=1e-3)


def test_scrfd_found_through_env_var_and_auto(scrfd_model, monkeypatch, tmp_path):
    from rtfer.detection.scrfd import find_model

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RTFER_SCRFD_MODEL", str(scrfd_model.parent))
    assert find_model() == scrfd_model
    assert create_detector("auto", det_width=64).name == "scrfd"


def test_missing_scrfd_raises_one_line_error_and_auto_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RTFER_SCRFD_MODEL", raising=False)
    with pytest.raises(BackendError, match="RTFER_SCRFD_MODEL") as info:
        create_detector("scrfd")
    assert "\n" not in str(info.value)
    assert create_detector("auto", det_width=64).name == "centerface"


# --------------------------------------------------------------------------- template fitting (training/)

def test_fit_template_on_fer2013_images(centerface, fer2013_dir):
    import cv2

    from rtfer.training.fit_template import collect_landmarks, fit_template, list_images

    paths = list_images(fer2013_dir / "val", limit=12, seed=0)
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]
    assert images[0].shape == (48, 48)
    blank = np.zeros((48, 48), np.uint8)
    lms, seen = collect_landmarks(images + [blank], centerface)
    assert seen == 13 and 8 <= len(lms) <= 12  # the blank image is skipped
    template = fit_template(images, centerface)
    assert template.shape == (5, 2)
    assert ((template > 0) & (template < 1)).all()
    assert template[0, 0] < template[2, 0] < template[1, 0]  # eyes either side of the nose
    assert template[:2, 1].max() < template[2, 1] < template[3:, 1].min()  # eyes above nose above mouth
    with pytest.raises(ValueError, match="no face"):
        fit_template([blank], centerface)


def test_detector_follows_the_bundle_and_warns_on_a_mismatch(caplog):
    import logging
    from types import SimpleNamespace

    from rtfer.pipeline import resolve_detector

    tied = SimpleNamespace(name="b", detector="centerface")
    free = SimpleNamespace(name="b", detector=None)
    assert resolve_detector("auto", tied) == "centerface"  # not whatever model pack sits in ~/.insightface
    assert resolve_detector("auto", free) == "auto"
    with caplog.at_level(logging.WARNING, logger="rtfer.pipeline"):
        assert resolve_detector("scrfd", tied) == "scrfd"
        assert resolve_detector("centerface", tied) == "centerface"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "aligned with centerface landmarks" in warnings[0]


def test_cuda_index_reaches_the_detector_session(monkeypatch):
    import onnxruntime as ort

    from rtfer.detection.base import ort_providers
    from rtfer.errors import BackendError

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ort_providers("cuda:1", False) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert ort_providers("cuda", False)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    with pytest.raises(BackendError):
        ort_providers("cuda:x", False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert ort_providers("cuda:1", True) == ["CPUExecutionProvider"]
