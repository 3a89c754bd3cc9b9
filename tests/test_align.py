"""5-point alignment: Umeyama similarity, crops, matrices, template in crop units."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rtfer.detection.align import ARCFACE_TEMPLATE, align_faces, estimate_similarity, invert_affine, transform_points

# Landmarks of one face of insightface's group photo (t1.jpg), as CenterFace finds them (frame pixels).
FACE_LANDMARKS = np.array([[761.0, 401.0], [806.0, 401.0], [773.0, 428.0], [766.0, 449.0], [802.0, 448.0]])


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_template_is_the_arcface_template_in_crop_units():
    t = np.asarray(ARCFACE_TEMPLATE)
    assert t.shape == (5, 2)
    np.testing.assert_allclose(t[0] * 112, [38.2946, 51.6963], atol=1e-9)
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left before right, as seen in the image


def test_bundle_uses_the_same_template():
    import rtfer.bundle

    assert rtfer.bundle.ARCFACE_TEMPLATE is ARCFACE_TEMPLATE


@pytest.mark.parametrize("angle,scale,tx,ty", [(0, 1, 0, 0), (25, 0.4, 13, -7), (-170, 2.5, 300, 80)])
def test_estimate_similarity_recovers_an_exact_similarity(angle, scale, tx, ty):
    dst = np.asarray(ARCFACE_TEMPLATE) * 112
    true = _similarity(angle, scale, tx, ty)
    src = transform_points(dst, invert_affine(true))  # src -> dst is exactly `true`
    m = estimate_similarity(src, dst)
    assert m.shape == (2, 3) and m.dtype == np.float64
    np.testing.assert_allclose(m, true, atol=1e-9)
    assert np.abs(transform_points(src, m) - dst).max() < 1.0


def test_estimate_similarity_never_reflects():
    dst = np.asarray(ARCFACE_TEMPLATE) * 112
    mirrored = dst * [-1, 1]
    m = estimate_similarity(mirrored, dst)
    assert np.linalg.det(m[:, :2]) > 0


def test_estimate_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError):
        estimate_similarity(np.ones((5, 2)), np.asarray(ARCFACE_TEMPLATE))


def test_invert_affine_round_trip_single_and_stacked():
    m = _similarity(30, 1.7, 5, -3)
    pts = np.random.default_rng(0).uniform(0, 100, (7, 2))
    np.testing.assert_allclose(transform_points(transform_points(pts, m), invert_affine(m)), pts, atol=1e-9)
    stack = np.stack([m, _similarity(-10, 0.5, 1, 2)])
    inv = invert_affine(stack)
    assert inv.shape == (2, 2, 3)
    np.testing.assert_allclose(inv[1], invert_affine(stack[1]))


def test_align_faces_maps_landmarks_onto_template(group_photo):
    for size in (112, 224):
        crops, mats = align_faces(group_photo, FACE_LANDMARKS[None], size)
        assert crops.shape == (1, size, size, 3) and crops.dtype == np.uint8
        assert mats.shape == (1, 2, 3)
        err = np.abs(transform_points(FACE_LANDMARKS, mats[0]) - np.asarray(ARCFACE_TEMPLATE) * size)
        assert err.max() < 0.08 * size  # a slightly turned head: the nose sits off the frontal template


def test_exact_similarity_lands_within_one_pixel():
    size = 112
    dst = np.asarray(ARCFACE_TEMPLATE) * size
    src = transform_points(dst, _similarity(12, 3.0, 400, 250))
    _, mats = align_faces(np.zeros((720, 1280, 3), np.uint8), src[None], size)
    assert np.abs(transform_points(src, mats[0]) - dst).max() < 1.0


def test_rotated_scaled_copy_aligns_back_to_the_same_crop(group_photo):
    crop_a, _ = align_faces(group_photo, FACE_LANDMARKS[None], 112)
    h, w = group_photo.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 20.0, 1.3)
    moved = cv2.warpAffine(group_photo, rot, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    crop_b, _ = align_faces(moved, transform_points(FACE_LANDMARKS, rot)[None], 112)
    diff = np.abs(crop_a[0].astype(np.float32) - crop_b[0].astype(np.float32))
    assert diff.mean() < 6.0, diff.mean()
    # and a different face position would not match: the comparison can fail
    crop_c, _ = align_faces(group_photo, (FACE_LANDMARKS + [40, 0])[None], 112)
    assert np.abs(crop_a[0].astype(np.float32) - crop_c[0].astype(np.float32)).mean() > 15.0


def test_crops_are_rgb_and_border_is_replicated():
    img = np.zeros((100, 100, 3), np.uint8)
    img[..., 0] = 255  # pure blue in BGR
    # landmarks near the corner so that most of the crop falls outside the image
    lm = np.asarray(ARCFACE_TEMPLATE) * 40 - 30
    crops, _ = align_faces(img, lm[None], 64)
    assert (crops[0, ..., 2] == 255).all() and (crops[0, ..., :2] == 0).all()


def test_gray_input_and_empty_landmarks():
    gray = np.full((50, 60), 128, np.uint8)
    crops, mats = align_faces(gray, np.zeros((0, 5, 2)), 112)
    assert crops.shape == (0, 112, 112, 3) and mats.shape == (0, 2, 3)
    crops, _ = align_faces(gray, (np.asarray(ARCFACE_TEMPLATE) * 40 + 5)[None], 48)
    assert crops.shape == (1, 48, 48, 3) and (crops == 128).all()


def test_large_faces_are_area_averaged_not_aliased():
    # a 1-pixel checkerboard seen through a 4x downscale: a bilinear warp samples it (aliasing: strong pattern),
    # area averaging gives the flat mid grey that a downscaled photo would show
    img = ((np.indices((600, 600)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(img[..., None], 3, axis=-1)
    dst = np.asarray(ARCFACE_TEMPLATE) * 48
    src = transform_points(dst, _similarity(0, 3.7, 100.3, 100.6))
    smooth, mats = align_faces(img, src[None], 48)
    aliased, mats_raw = align_faces(img, src[None], 48, antialias=False)
    np.testing.assert_allclose(mats, mats_raw)  # same geometry either way
    assert aliased[0].astype(np.float32).std() > 25
    assert smooth[0].astype(np.float32).std() < 3 and abs(float(smooth[0].mean()) - 127.5) < 3


def test_antialiased_crop_keeps_the_geometry_of_the_plain_warp(group_photo):
    # on a real photo, the two paths differ only by the blur of the downscale, not by a shift
    big = cv2.resize(group_photo, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    smooth, _ = align_faces(big, (FACE_LANDMARKS * 3)[None], 48)
    plain, _ = align_faces(cv2.GaussianBlur(big, (0, 0), 2.0), (FACE_LANDMARKS * 3)[None], 48, antialias=False)
    diff = np.abs(smooth[0].astype(np.float32) - plain[0].astype(np.float32))
    assert diff.mean() < 6.0, diff.mean()
    shifted, _ = align_faces(big, (FACE_LANDMARKS * 3 + [12, 0])[None], 48)
    assert np.abs(shifted[0].astype(np.float32) - plain[0].astype(np.float32)).mean() > diff.mean() + 3
