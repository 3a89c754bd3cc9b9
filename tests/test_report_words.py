"""The report says what it measures (time on screen without gaps, the valence-swing window) and the batch index
links each report safely, whatever the video is called, with its duration, faces, dominant emotion and valence."""
from __future__ import annotations

import html as html_lib
import re
import shutil

import numpy as np
import pytest

from cli_helpers import bundle_args, run_cli
from rtfer.report import index_summary, read_index_summary, report_href
from rtfer.sinks import SummaryAccumulator


def _probs(n: int, cls: int = 3) -> np.ndarray:
    p = np.full((n, 7), 0.05, np.float32)
    p[:, cls] = 0.7
    return p


def test_time_on_screen_counts_frames_not_gaps():
    acc = SummaryAccumulator()
    for k in range(120):  # 4 s at 30 fps; face 1 in view for 0-1 s and 3-4 s, face 2 all the time
        t = k / 30
        ids = [1, 2] if k < 30 or k >= 90 else [2]
        acc.add(t, np.array(ids), _probs(len(ids)))
    acc.add(4.0, np.array([], int), np.zeros((0, 7)))  # a last frame without faces
    faces = {f.face_id: f for f in acc.summary().faces}
    assert faces[1].seconds == pytest.approx(2.0, abs=1e-6)  # 60 frames of 1/30 s; the 2 s gap is not on screen
    assert faces[2].seconds == pytest.approx(4.0, abs=1e-6)
    assert faces[1].first_s == 0.0 and faces[1].last_s == pytest.approx(119 / 30)


def test_time_on_screen_of_a_face_in_the_last_frame():
    acc = SummaryAccumulator()
    for k in range(10):
        acc.add(k / 10, np.array([0]), _probs(1))
    assert acc.summary().faces[0].seconds == pytest.approx(1.0)  # 10 frames of 0.1 s, the last one included


def test_index_summary_over_all_face_rows():
    acc = SummaryAccumulator()
    for k in range(30):
        acc.add(k / 10, np.array([0, 1]), np.stack([_probs(1, 3)[0], _probs(1, 5)[0] if k < 20 else _probs(1, 3)[0]]))
    d = index_summary(acc.summary(), 3.0, 2)
    assert d["faces"] == 2 and d["tracks"] == 2 and d["face_rows"] == 60 and d["duration_s"] == 3.0
    assert d["dominant"] == "happiness" and d["dominant_share"] == pytest.approx(40 / 60, abs=1e-4)
    v_happy, v_anger = 0.7 + 0.05 - 4 * 0.05, 0.05 + 0.05 - (0.7 + 3 * 0.05)
    assert d["mean_valence"] == pytest.approx((40 * v_happy + 20 * v_anger) / 60, abs=1e-3)


@pytest.mark.parametrize("name, expected", [("javascript:alert(1).html", "javascript%3Aalert%281%29.html"),
                                            ("clip#1.html", "clip%231.html"), ("a b?c=1.html", "a%20b%3Fc%3D1.html")])
def test_report_href_percent_encodes_each_part(tmp_path, name, expected):
    assert report_href(tmp_path / name, tmp_path) == expected
    assert report_href(tmp_path / "s p" / name, tmp_path) == f"s%20p/{expected}"
    assert report_href(tmp_path / name, tmp_path / "x") == f"../{expected}"


def test_batch_index_with_hostile_names_and_facts(tmp_path, capsys, tiny_bundle, group_video):
    src = tmp_path / "in"
    src.mkdir()
    names = ["javascript:alert(1).mp4", "clip#1.mp4", "a b?c=1.mp4"]
    for n in names:
        shutil.copy(group_video, src / n)
    out = tmp_path / "out"
    code, _, err = run_cli(["analyze", str(src), "--out-dir", str(out), "--report", *bundle_args(tiny_bundle)], capsys)
    assert code == 0, err
    page = (out / "index.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert sorted(hrefs) == sorted(["a%20b%3Fc%3D1.html", "clip%231.html", "javascript%3Aalert%281%29.html"])
    from urllib.parse import unquote

    for h in hrefs:  # each link resolves to the report beside the page, and to nothing else
        assert ":" not in h and "#" not in h and "?" not in h and (out / unquote(h)).is_file()
    for n in names:
        assert html_lib.escape(n, quote=False) in page
        facts = read_index_summary(out / n.replace(".mp4", ".html"))
        assert facts["duration_s"] == pytest.approx(2.0, abs=0.1) and facts["tracks"] >= 1
        assert facts["dominant"] and -1 <= facts["mean_valence"] <= 1
    body = page[page.index("<tbody>"):]
    assert body.count("<tr>") == 3 and body.count('class="chip"') == 3  # a mean valence chip per video
    assert "duration" in page and "dominant emotion" in page and "mean valence" in page
