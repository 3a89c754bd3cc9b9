"""One colour per emotion class and per sentiment level, used everywhere (annotated video, summary PNG, HTML report,
desktop app), plus the colour science that checks them.

The class colours are the Okabe-Ito palette (designed to stay distinct for the common colour-vision deficiencies),
assigned so that the valence reads at a glance: happiness is the green end and disgust the purple end of the same
purple -> grey -> green valence scale (ColorBrewer's colour-blind-safe PRGn), anger is vermillion, neutral grey.
``min_delta_e`` measures the palette (CIEDE2000, with and without simulated colour-vision deficiencies, Machado et
al. 2009 at full severity); the tests hold it above a stated floor.
"""
from __future__ import annotations

import itertools

import numpy as np

#: RGB hex per emotion class (Okabe-Ito).
EMOTION_COLORS_HEX: dict[str, str] = {
    "surprise": "#F0E442",   # yellow
    "fear": "#56B4E9",       # sky blue
    "disgust": "#CC79A7",    # reddish purple (negative end of the valence scale)
    "happiness": "#009E73",  # bluish green (positive end of the valence scale)
    "sadness": "#0072B2",    # blue
    "anger": "#D55E00",      # vermillion
    "neutral": "#BBBBBB",    # light grey
}
#: RGB hex per sentiment level: purple (negative) -> grey -> green (positive), ColorBrewer PRGn.
LEVEL_COLORS_HEX: dict[str, str] = {
    "very_negative": "#762A83",
    "negative": "#AF8DC3",
    "neutral": "#BBBBBB",
    "positive": "#7FBF7B",
    "very_positive": "#1B7837",
}
#: The valence colour scale from -1 to +1 (matplotlib: ``valence_cmap()``).
VALENCE_STOPS_HEX: tuple[str, ...] = ("#762A83", "#AF8DC3", "#E7E7E7", "#7FBF7B", "#1B7837")
UNKNOWN_HEX = "#FFFFFF"

#: Face identity (which line is which face, in the app's timeline and the summary PNG) never uses a hue: hue always
#: means an emotion or a valence. Identity is a dark neutral tone x a dash pattern x a marker, plus the face's label.
IDENTITY_TONES_HEX: tuple[str, ...] = ("#1A1A1A", "#555555")
#: Dash patterns as on/off lengths in line widths (solid first); matplotlib ``(0, pattern)``, Qt ``setDashPattern``.
IDENTITY_DASHES: tuple[tuple[float, ...], ...] = ((), (5.0, 2.0), (1.2, 1.6), (5.0, 2.0, 1.2, 2.0), (9.0, 3.0))
#: Marker per dash pattern (matplotlib names; pyqtgraph calls the triangle "t").
IDENTITY_MARKERS: tuple[str, ...] = ("s", "o", "^", "d", "x")
#: Text samples of the dash patterns for legends in rich text.
IDENTITY_GLYPHS: tuple[str, ...] = ("\u2501\u2501\u2501", "\u254d\u254d\u254d", "\u2509\u2509\u2509",
                                    "\u2501\u00b7\u2501", "\u2501 \u2501")


def identity_style(face_id: int) -> tuple[str, tuple[float, ...], str, str]:
    """(tone hex, dash pattern, marker, legend glyph) of a face id: 10 distinct tone x dash pairs, then cycling."""
    k = int(face_id) % (len(IDENTITY_TONES_HEX) * len(IDENTITY_DASHES))
    tone, dash = divmod(k, len(IDENTITY_DASHES))
    return IDENTITY_TONES_HEX[tone], IDENTITY_DASHES[dash], IDENTITY_MARKERS[dash], IDENTITY_GLYPHS[dash]

#: Machado, Oliveira & Fernandes (2009) simulation matrices at severity 1.0, applied to linear RGB.
CVD_MATRICES: dict[str, np.ndarray] = {
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}


def hex_to_rgb(hex_color: str) -> tuple[int, int, int]:
    h = hex_color.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def color_hex(name: str) -> str:
    """The hex colour of an emotion class or a sentiment level (white for anything else)."""
    return EMOTION_COLORS_HEX.get(name) or LEVEL_COLORS_HEX.get(name) or UNKNOWN_HEX


def color_bgr(name: str) -> tuple[int, int, int]:
    """OpenCV colour (BGR 0..255) of an emotion class or a sentiment level."""
    r, g, b = hex_to_rgb(color_hex(name))
    return b, g, r


def color_rgb01(name: str) -> tuple[float, float, float]:
    """Matplotlib colour (RGB in [0, 1]) of an emotion class or a sentiment level."""
    r, g, b = hex_to_rgb(color_hex(name))
    return r / 255.0, g / 255.0, b / 255.0


def valence_cmap():
    """A matplotlib colormap for valence in [-1, 1] (use with ``Normalize(-1, 1)``); imports matplotlib."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("rtfer_valence", list(VALENCE_STOPS_HEX))


def valence_hex(value: float) -> str:
    """The colour of one valence value (linear between the scale's stops), without matplotlib."""
    stops = np.array([hex_to_rgb(h) for h in VALENCE_STOPS_HEX], dtype=np.float64)
    x = (min(1.0, max(-1.0, float(value))) + 1.0) / 2.0 * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    rgb = stops[i] + (stops[i + 1] - stops[i]) * (x - i)
    return "#%02X%02X%02X" % tuple(int(round(c)) for c in rgb)


# -- colour science --------------------------------------------------------------------------------------------------
def _srgb_to_linear(rgb01: np.ndarray) -> np.ndarray:
    return np.where(rgb01 <= 0.04045, rgb01 / 12.92, ((rgb01 + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)


def simulate_cvd(rgb01: np.ndarray, kind: str) -> np.ndarray:
    """sRGB colours (..., 3) in [0, 1] as seen with ``kind`` (protanopia, deuteranopia, tritanopia)."""
    m = CVD_MATRICES[kind]
    return _linear_to_srgb(_srgb_to_linear(np.asarray(rgb01, dtype=np.float64)) @ m.T)


def rgb_to_lab(rgb01: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in [0, 1] -> CIE L*a*b* (D65)."""
    lin = _srgb_to_linear(np.asarray(rgb01, dtype=np.float64))
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e2000(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """CIEDE2000 colour difference of two L*a*b* colours (Sharma, Wu & Dalal 2005)."""
    l1, a1, b1 = (float(v) for v in lab1)
    l2, a2, b2 = (float(v) for v in lab2)
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    cm = (c1 + c2) / 2
    g = 0.5 * (1 - np.sqrt(cm ** 7 / (cm ** 7 + 25 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp, dcp = l2 - l1, c2p - c1p
    if c1p * c2p == 0:
        dhp = 0.0
    else:
        dh = h2p - h1p
        dhp = dh - 360 if dh > 180 else dh + 360 if dh < -180 else dh
    dHp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dhp / 2))
    lpm, cpm = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hpm = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hpm = (h1p + h2p) / 2
    else:
        hpm = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * np.cos(np.radians(hpm - 30)) + 0.24 * np.cos(np.radians(2 * hpm))
         + 0.32 * np.cos(np.radians(3 * hpm + 6)) - 0.20 * np.cos(np.radians(4 * hpm - 63)))
    d_theta = 30 * np.exp(-(((hpm - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cpm ** 7 / (cpm ** 7 + 25 ** 7))
    sl = 1 + 0.015 * (lpm - 50) ** 2 / np.sqrt(20 + (lpm - 50) ** 2)
    sc, sh = 1 + 0.045 * cpm, 1 + 0.015 * cpm * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    return float(np.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dHp / sh) ** 2 + rt * (dcp / sc) * (dHp / sh)))


def min_delta_e(colors: dict[str, str] | None = None, vision: str | None = None) -> tuple[float, tuple[str, str]]:
    """The smallest CIEDE2000 difference between any two ``colors`` (default: the class colours) and that pair,
    as seen with normal vision (``vision=None``) or a simulated deficiency (a key of :data:`CVD_MATRICES`)."""
    colors = colors or EMOTION_COLORS_HEX
    names = list(colors)
    rgb = np.array([hex_to_rgb(colors[n]) for n in names], dtype=np.float64) / 255.0
    if vision is not None:
        rgb = simulate_cvd(rgb, vision)
    lab = rgb_to_lab(rgb)
    best = (float("inf"), ("", ""))
    for i, j in itertools.combinations(range(len(names)), 2):
        d = delta_e2000(lab[i], lab[j])
        if d < best[0]:
            best = (d, (names[i], names[j]))
    return best


def hue_degrees(hex_color: str) -> float:
    """The CIELAB hue angle of a colour, in degrees."""
    lab = rgb_to_lab(np.array(hex_to_rgb(hex_color), dtype=np.float64) / 255.0)
    return float(np.degrees(np.arctan2(lab[2], lab[1])) % 360)


