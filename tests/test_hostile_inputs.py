"""Hostile inputs (issue 23, security): bundles whose bundle.json points outside the bundle folder, stream URLs with
credentials, ``**`` globs through directory symlinks, decompression-bomb images."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli_helpers import bundle_args, run_cli

BUILTIN = Path(__file__).resolve().parents[1] / "rtfer" / "assets" / "bundles" / "fast"


# ------------------------------------------------------------------------------------------------ bundle confinement
def _bundle_copy(tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the built-in fast bundle (the real ONNX files) to tamper with."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUILTIN, folder)
    return folder, json.loads((folder / "bundle.json").read_text(encoding="utf-8"))


def _write(folder: Path, meta: dict) -> None:
    (folder / "bundle.json").write_text(json.dumps(meta), encoding="utf-8")


@pytest.mark.parametrize("where", ["file", "int8.file"])
@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink", "dir_symlink"])
def test_bundle_member_paths_outside_the_folder_are_refused_before_any_open(tmp_path, monkeypatch, where, kind):
    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError

    folder, meta = _bundle_copy(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(folder / meta["members"][0]["file"], outside / "evil.onnx")  # a valid ONNX file: it would load
    name = {"absolute": str(outside / "evil.onnx"), "dotdot": "../elsewhere/evil.onnx",
            "symlink": "link.onnx", "dir_symlink": "sub/evil.onnx"}[kind]
    if kind == "symlink":
        os.symlink(outside / "evil.onnx", folder / "link.onnx")
    if kind == "dir_symlink":
        os.symlink(outside, folder / "sub")
    member = meta["members"][0]
    if where == "file":
        member["file"] = name
    else:
        member["int8"]["file"] = name
    _write(folder, meta)
    opened: list[str] = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(BundleError, match="inside the bundle folder|outside the bundle folder"):
        BundleSpec.read(folder)
    assert not any("evil" in p for p in opened), opened  # refused when bundle.json is parsed, nothing else read


def test_bundle_reading_etc_passwd_is_a_one_line_error_exit_2(tmp_path, capsys):
    folder, meta = _bundle_copy(tmp_path)
    meta["members"][1]["file"] = "../../../../../../../../etc/passwd"
    _write(folder, meta)
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")  # never reached: the bundle is refused first
    code, out, err = run_cli(["analyze", str(image), "-o", str(tmp_path / "x.csv"), *bundle_args(folder)], capsys)
    assert code == 2
    assert err.startswith("rtfer: error: ") and err.count("\n") == 1 and "outside" not in out
    assert "/etc/passwd" in err and "inside the bundle folder" in err


def test_bundle_confusion_png_is_confined_and_plain_names_still_load(tmp_path):
    from rtfer.bundle import BundleSpec
    from rtfer.errors import BundleError

    folder, meta = _bundle_copy(tmp_path)
    os.symlink(folder / meta["members"][0]["file"], folder / "inside-link.onnx")  # a link within the folder is fine
    meta["members"][0]["file"] = "inside-link.onnx"
    meta["members"][0]["int8"]["file"] = "./" + meta["members"][0]["int8"]["file"]
    _write(folder, meta)
    assert BundleSpec.read(folder).members[0].file == "inside-link.onnx"
    meta.setdefault("metrics", {})["confusion_png"] = "/etc/hostname"
    _write(folder, meta)
    with pytest.raises(BundleError, match="confusion_png"):
        BundleSpec.read(folder)


# --------------------------------------------------------------------------------------------- stream credentials
SECRETS = ["p@ssW0rd", "pa:ss@w:rd@", "p%40ss%3Aword", "@@::@"]


@pytest.mark.parametrize("password", SECRETS)
@pytest.mark.parametrize("scheme", ["rtsp", "http", "rtmp"])
def test_redact_url_hides_the_whole_user_info_up_to_the_last_at(password, scheme):
    from rtfer.errors import one_line, redact_url

    url = f"{scheme}://alice:{password}@cam.local:554/live/ch1?res=hd"
    for text in (url, f"cannot open stream {url}: Connection refused", f"'{url}'", f"a {url} b {url}"):
        clean = redact_url(text)
        assert "alice" not in clean and password not in clean
        assert "ssW0rd" not in clean and "w:rd" not in clean and "%40" not in clean
        assert f"{scheme}://***@cam.local:554/live/ch1?res=hd" in clean
    assert "alice" not in one_line(RuntimeError(f"failed on {url}"))


def test_redact_url_keeps_urls_without_credentials_and_hides_query_passwords():
    from rtfer.errors import redact_url

    for plain in ("http://host/users/@me/clip.mp4", "rtsp://10.0.0.2:554/stream", "clip@2x.mp4", "a@b: c"):
        assert redact_url(plain) == plain
    assert redact_url("rtsp://cam/live?user=admin&password=s3cr@t&ch=1") == \
        "rtsp://cam/live?user=admin&password=***&ch=1"


# ---------------------------------------------------------------------------------------- ** globs and symlinks
def _discover_within(inputs, seconds: float = 10.0):
    """discover_inputs in a thread: a glob that walks the disk fails the test instead of hanging it."""
    import threading

    from rtfer.batch.discovery import discover_inputs

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(pairs=discover_inputs(inputs)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"discover_inputs({inputs}) still running after {seconds} s (following links?)"
    return box["pairs"]


def test_double_star_glob_does_not_follow_directory_links(tmp_path, monkeypatch, caplog):
    tree = tmp_path / "videos"
    (tree / "a" / "b").mkdir(parents=True)
    for rel in ("a/one.mp4", "a/b/two.avi"):
        (tree / rel).write_bytes(b"x")
    os.symlink("/", tree / "a" / "root")  # would walk the whole disk
    os.symlink("..", tree / "a" / "b" / "loop")  # would repeat the tree (18 duplicate CSVs before)
    os.symlink(tree / "a" / "one.mp4", tree / "one-again.mp4")  # a file link: the same input, once
    expected = ["a/b/two.avi", "a/one.mp4"]
    for pattern in (f"{tree}/**/*.mp4", f"{tree}/**", f"{tree}/**/*", str(tree)):
        pairs = _discover_within([pattern])
        got = sorted(os.path.realpath(f) for f, _ in pairs)
        assert got == sorted(str((tree / rel).resolve()) for rel in expected if rel.endswith(".mp4")
                             or not pattern.endswith(".mp4")), pattern
    monkeypatch.chdir(tree)
    pairs = _discover_within(["**/*.mp4", "a/*", "a/one.mp4"])
    assert [f.as_posix() for f, _ in pairs] == ["one-again.mp4", "a/b/two.avi"]  # a/one.mp4 is one-again.mp4
    assert any("directory symlink" in r.getMessage() for r in caplog.records)  # a/root matched a/* and was skipped


def test_batch_through_a_link_loop_writes_each_video_once(tmp_path):
    from rtfer.batch.plan import plan_batch

    tree = tmp_path / "in"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "clip.mp4").write_bytes(b"x")
    os.symlink(tree, tree / "sub" / "again")
    plan = plan_batch([f"{tree}/**/*.mp4", str(tree)], tmp_path / "out", overwrite=True)
    assert [Path(t.output).relative_to(tmp_path / "out").as_posix() for t in plan.todo] == ["sub/clip.csv"]


# ------------------------------------------------------------------------------------------- decompression bombs
def _png(w: int, h: int, idat: bytes | None = None) -> bytes:
    """A grey 8-bit PNG of w x h: real zlib data when small, else a tiny (truncated) IDAT under a huge header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    if idat is None:
        idat = zlib.compress(b"".join(b"\0" + bytes([i % 256]) * w for i in range(h)), 9) if w * h <= 4_000_000 \
            else zlib.compress(b"\0" * 100)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _gif(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    import struct

    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff" + b","
            + struct.pack("<HHHHB", 0, 0, *frame, 0) + b"\x02\x02\x44\x01\x00;")


@pytest.mark.parametrize("name, data", [
    ("bomb.png", _png(20000, 20000)),            # 400 MP: 2.5 GB to decode before
    ("huge.png", _png(1_000_000, 1_000_000)),    # beyond what any decoder takes: internal error before
    ("screen.gif", _gif((65535, 65535), (1, 1))),
    ("frame.gif", _gif((65535, 65535), (65535, 65535))),
])
def test_image_bombs_are_refused_from_the_header_with_exit_2(tmp_path, capsys, name, data):
    import resource

    path = tmp_path / name
    path.write_bytes(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = run_cli(["analyze", str(path), "-o", str(tmp_path / "x.csv"), "-q"], capsys)
    assert code == 2, err
    assert err.startswith("rtfer: error: ") and err.count("\n") == 1 and "megapixels" in err and name in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was decoded
    assert not (tmp_path / "x.csv").exists()


def test_pixel_limit_is_stated_and_can_be_raised(tmp_path, monkeypatch):
    import cv2
    import numpy as np

    from rtfer.capture import open_source
    from rtfer.errors import InputError

    png = tmp_path / "wide.png"
    png.write_bytes(_png(2000, 1000))
    jpg = tmp_path / "wide.jpg"
    cv2.imwrite(str(jpg), np.full((1000, 2000, 3), 128, np.uint8))
    monkeypatch.setenv("RTFER_MAX_IMAGE_PIXELS", "1e6")
    for path in (png, jpg):
        with pytest.raises(InputError, match=r"2000x1000 pixels \(2.0 megapixels\), above the limit of 1 megapixels"
                                             r".*RTFER_MAX_IMAGE_PIXELS=2000000"):
            open_source(path)
    monkeypatch.setenv("RTFER_MAX_IMAGE_PIXELS", "2000000")
    for path in (png, jpg):
        with open_source(path) as src:
            assert next(iter(src)).image.shape == (1000, 2000, 3)
    monkeypatch.setenv("RTFER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="must be a number"):
        open_source(png)


def test_a_bomb_in_a_folder_is_skipped_with_a_warning(tmp_path):
    import cv2
    import numpy as np

    from rtfer.capture import open_source

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 60, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(_png(60000, 60000))
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((40, 60, 3), np.uint8))
    with open_source(tmp_path) as src:
        names = [f.source for f in src]
        assert names == ["a.png", "c.png"]
        assert any("skipped b.png" in w and "megapixels" in w for w in src.warnings)


def test_video_frames_above_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    import numpy as np

    from media_helpers import write_test_video
    from rtfer.capture import open_source
    from rtfer.errors import InputError

    path = write_test_video(tmp_path / "v.mp4", [np.zeros((240, 320, 3), np.uint8)] * 3)
    monkeypatch.setenv("RTFER_MAX_IMAGE_PIXELS", "50000")
    with pytest.raises(InputError, match="each frame is 320x240 pixels"):
        open_source(path)


def test_images_cut_inside_their_header_are_clean_errors(tmp_path):
    """The large fuzz set found a PNG cut inside its IHDR: `internal error: unpack requires a buffer of 8 bytes`."""
    from rtfer.capture import open_source
    from rtfer.errors import InputError

    for name, data, header in (("p.png", _png(64, 48), 33), ("g.gif", _gif((64, 48), (64, 48)), 13)):
        for n in range(1, header):  # PNG: signature + IHDR; GIF: signature + logical screen descriptor
            path = tmp_path / f"{n}{name}"
            path.write_bytes(data[:n])
            with pytest.raises(InputError):  # when opened, or (a GIF opened as a video) when no frame decodes
                with open_source(path) as src:
                    list(src)
