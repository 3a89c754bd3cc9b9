"""5-point face alignment as pure functions: landmarks -> similarity matrix -> warped crop (+ the matrix, so that
results map back onto the frame). After insightface ``utils/face_align.py``, without scikit-image.

The template is in crop units (x / size, y / size), so one template serves every crop size; the pipeline calls
:func:`align_faces` once per distinct member input size.
"""
from __future__ import annotations

import numpy as np

#: ArcFace 5-point template for a 112x112 crop, in crop units (x / 112, y / 112).
#: Order: left eye, right eye, nose, left mouth corner, right mouth corner (as seen in the image).
ARCFACE_TEMPLATE = (
    (38.2946 / 112, 51.6963 / 112),
    (73.5318 / 112, 51.5014 / 112),
    (56.0252 / 112, 71.7366 / 112),
    (41.5493 / 112, 92.3655 / 112),
    (70.7299 / 112, 92.2041 / 112),
)

__all__ = ["ARCFACE_TEMPLATE", "align_faces", "estimate_similarity", "invert_affine", "transform_points"]


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` onto ``dst``
    (Umeyama 1991). src, dst: (k, 2) with k >= 2. Returns a (2, 3) float64 matrix for cv2.warpAffine."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"src and dst must be matching (k>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("cannot estimate a similarity from coincident source points")
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # forbid reflections
        d[1] = -1.0
    r = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_s)
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix, or of a stack (n, 2, 3). Maps crop pixels back to frame pixels."""
    m = np.asarray(m, np.float64)
    a, t = m[..., :2], m[..., 2:]
    a_inv = np.linalg.inv(a)
    return np.concatenate([a_inv, -a_inv @ t], axis=-1)


def transform_points(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to points (..., 2)."""
    points = np.asarray(points, np.float64)
    m = np.asarray(m, np.float64)
    return points @ m[:, :2].T + m[:, 2]


def align_faces(image_bgr: np.ndarray, landmarks: np.ndarray, size: int,
                template=ARCFACE_TEMPLATE, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Warp each face so that its 5 landmarks land on ``template * size``.

    image_bgr: HxWx3 uint8 BGR (HxW gray is accepted); landmarks: (n, 5, 2) frame pixels; template: (5, 2) crop
    units. Returns crops (n, size, size, 3) uint8 **RGB** and the frame->crop matrices (n, 2, 3) float64. Pixels
    outside the frame replicate the border (no black wedges for faces at the frame edge).

    With ``antialias`` a face that shrinks by more than 2x (a 200 px face into a 48 px crop) is warped at an integer
    multiple of ``size`` first and then area-averaged down, as photos are downscaled; a bilinear warp straight to
    the small size would alias (sample every fourth pixel), which is not what the training images look like.
    """
    import cv2

    size = int(size)
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.size == 0:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, 2, 3), np.float64)
    landmarks = landmarks.reshape(-1, 5, 2)
    dst = np.asarray(template, np.float64).reshape(5, 2) * size
    crops = np.empty((len(landmarks), size, size, 3), np.uint8)
    matrices = np.empty((len(landmarks), 2, 3), np.float64)
    for i, lm in enumerate(landmarks):
        m = estimate_similarity(lm, dst)
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        factor = min(int(np.floor(1.0 / scale)), 8) if antialias and scale > 0 else 1
        if factor >= 2:
            big = m.copy()
            big[:, :] *= factor
            big[:, 2] += (factor - 1) / 2.0  # pixel centres: crop pixel j covers big pixels j*f .. j*f+f-1
            warped = cv2.warpAffine(image, big, (size * factor, size * factor), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
            warped = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
        else:
            warped = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crops[i] = warped[:, :, ::-1]
        matrices[i] = m
    return crops, matrices
