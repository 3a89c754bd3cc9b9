"""Dataset readers (RAF-DB official / Kaggle, image folder, FER+ votes), splits, packing and batching."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from rtfer.errors import InputError
from rtfer.labels import CLASSES, FERPLUS_COLUMNS
from rtfer.training.data import (BatchLoader, DataSpec, class_balanced_weights, ferplus_targets, load_packed,
                                 pack, read_ferplus, read_image_folder, read_rafdb, read_spec, stratified_split)

RAF_NAMES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")


def test_image_folder_maps_fer2013_names_to_canonical_order(fer_folder):
    index = read_image_folder(fer_folder / "train")
    assert len(index) == 21
    for path, label in zip(index.paths, index.labels):
        folder = path.parent.name
        expected = {"angry": "anger", "happy": "happiness", "sad": "sadness"}.get(folder, folder)
        assert CLASSES[label] == expected
    assert index.class_counts().tolist() == [3] * 7


def test_rafdb_official_layout(tmp_path, make_image):
    basic = tmp_path / "basic"
    lines = []
    for i, label in enumerate([1, 4, 7, 2, 4], 1):
        lines.append(f"train_{i:05d}.jpg {label}")
        make_image(basic / "Image" / "aligned" / f"train_{i:05d}_aligned.jpg", i)
    lines.append("test_0001.jpg 6")
    make_image(basic / "Image" / "aligned" / "test_0001_aligned.jpg", 99)
    (basic / "EmoLabel").mkdir(parents=True)
    (basic / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    train = read_rafdb(tmp_path, "train")
    assert [CLASSES[k] for k in train.labels] == ["surprise", "happiness", "neutral", "fear", "happiness"]
    assert train.paths[0].name == "train_00001_aligned.jpg"
    test = read_rafdb(tmp_path, "test")
    assert test.labels.tolist() == [5] and CLASSES[5] == "anger"


def test_rafdb_official_missing_image_is_an_input_error(tmp_path):
    (tmp_path / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 3\n")
    with pytest.raises(InputError, match="missing"):
        read_rafdb(tmp_path, "train")


@pytest.mark.parametrize("with_csv", [True, False])
def test_rafdb_kaggle_layout(tmp_path, with_csv, make_image):
    rows = []
    for i, label in enumerate([3, 3, 5, 7], 1):
        name = f"train_{i:05d}_aligned.jpg"
        make_image(tmp_path / "DATASET" / "train" / str(label) / name, i)
        rows.append((name, label))
    make_image(tmp_path / "DATASET" / "test" / "1" / "test_0001_aligned.jpg", 50)
    if with_csv:
        with open(tmp_path / "train_labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "label"])
            w.writerows(rows)
    train = read_rafdb(tmp_path, "train")
    assert sorted(CLASSES[k] for k in train.labels) == sorted(["disgust", "disgust", "sadness", "neutral"])
    assert read_rafdb(tmp_path, "test").labels.tolist() == [0]


def test_unknown_rafdb_layout(tmp_path):
    with pytest.raises(InputError, match="neither"):
        read_rafdb(tmp_path, "train")


def test_ferplus_targets_majority_soft_and_drops():
    cols = list(FERPLUS_COLUMNS)

    def row(**votes):
        return [votes.get(c, 0) for c in cols]

    votes = np.array([
        row(happiness=8, neutral=2),  # happiness
        row(contempt=6, anger=4),  # contempt majority: dropped
        row(unknown=5, sadness=3, NF=2),  # unknown: dropped
        row(NF=10),  # not a face: dropped
        row(fear=4, surprise=4, neutral=2),  # tie: dropped
        row(anger=5, disgust=3, contempt=2),  # anger; soft ignores contempt
    ])
    keep, labels, soft = ferplus_targets(votes)
    assert keep.tolist() == [True, False, False, False, False, True]
    assert CLASSES[labels[0]] == "happiness" and CLASSES[labels[5]] == "anger"
    assert soft[0, CLASSES.index("happiness")] == pytest.approx(0.8)
    assert soft[0, CLASSES.index("neutral")] == pytest.approx(0.2)
    assert soft[5, CLASSES.index("anger")] == pytest.approx(5 / 8)
    assert soft[5, CLASSES.index("disgust")] == pytest.approx(3 / 8)
    assert np.allclose(soft[keep].sum(1), 1.0)


def test_ferplus_single_vote_outliers_are_dropped_from_soft_targets():
    cols = list(FERPLUS_COLUMNS)
    votes = np.zeros((2, len(cols)))
    for c, v in {"happiness": 7, "neutral": 2, "surprise": 1}.items():
        votes[0, cols.index(c)] = v
    votes[1, cols.index("sadness")], votes[1, cols.index("fear")] = 1, 0  # a lone vote that is the majority stays
    _, _, soft = ferplus_targets(votes)
    assert soft[0, CLASSES.index("surprise")] == 0
    assert soft[0, CLASSES.index("happiness")] == pytest.approx(7 / 9)
    assert soft[1, CLASSES.index("sadness")] == pytest.approx(1.0)
    _, _, every_vote = ferplus_targets(votes, min_votes=1)
    assert every_vote[0, CLASSES.index("surprise")] == pytest.approx(0.1)


def test_read_ferplus_csv(fer_folder, tmp_path):
    path = tmp_path / "votes.csv"
    header = ["split", "class", "file", "usage", "ferplus_image", *FERPLUS_COLUMNS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow(["train", "happy", "train_happy_0.jpg", "Training", "fer1.png", 0, 9, 1, 0, 0, 0, 0, 0, 0, 0])
        w.writerow(["train", "angry", "train_angry_0.jpg", "Training", "fer2.png", 6, 0, 0, 0, 4, 0, 0, 0, 0, 0])
        w.writerow(["train", "sad", "train_sad_0.jpg", "Training", "", *[""] * 10])  # not a face
        w.writerow(["train", "fear", "train_fear_0.jpg", "Training", "fer3.png", 0, 0, 0, 0, 0, 0, 1, 0, 9, 0])
        w.writerow(["val", "happy", "val_happy_0.jpg", "PublicTest", "fer4.png", 0, 10, 0, 0, 0, 0, 0, 0, 0, 0])
    index = read_ferplus(path, fer_folder, "train")
    assert [p.name for p in index.paths] == ["train_happy_0.jpg", "train_angry_0.jpg"]
    # FER+ relabels the FER2013 'angry' image as neutral (6 of 10 votes)
    assert [CLASSES[k] for k in index.labels] == ["happiness", "neutral"]
    assert index.soft.shape == (2, 7)
    assert len(read_ferplus(path, fer_folder, "val")) == 1


def test_stratified_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(7), [100, 50, 20, 200, 80, 60, 10])
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=7).tolist() == [10, 5, 2, 20, 8, 6, 1]
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.1, seed=4)[1])


def test_pack_round_trip_and_gray_to_three_channels(fer_folder, tmp_path):
    index = read_spec(DataSpec(kind="folder", root=str(fer_folder), split="val"))
    out = pack(index, tmp_path / "val.npz", progress=False)
    data = load_packed(out)
    assert data.images.shape == (14, 24, 24, 1) and data.images.dtype == np.uint8
    assert np.array_equal(data.labels, index.labels)
    loader = BatchLoader(data, 5)
    batches = list(loader)
    assert len(batches) == 3 and batches[-1][0].shape == (4, 1, 24, 24)
    from rtfer.training.augment import to_float

    x = to_float(batches[0][0], 32, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (5, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])


def test_pack_color_images_are_rgb(tmp_path, make_image):
    for c in ("happy", "sad"):
        make_image(tmp_path / "d" / c / "a.png", 7, gray=False)
    data = load_packed(pack(read_image_folder(tmp_path / "d"), tmp_path / "c.npz", progress=False))
    assert data.images.shape[-1] == 3
    # the file's third (red, in BGR) channel is 255 - v: after decoding to RGB it comes first
    assert data.images[0, 0, 0, 0] > data.images[0, 0, 0, 2]


def test_loader_shuffle_is_seeded_and_weighted_sampling_balances():
    from rtfer.training.data import Packed

    labels = np.array([0] * 90 + [1] * 10)
    data = Packed(np.zeros((100, 4, 4, 1), np.uint8), labels)
    a = BatchLoader(data, 10, shuffle=True, seed=1)
    b = BatchLoader(data, 10, shuffle=True, seed=1)
    assert np.array_equal(a.order(), b.order())
    a.set_epoch(1)
    assert not np.array_equal(a.order(), b.order())
    w = BatchLoader(data, 10, sample_weights=class_balanced_weights(labels), seed=0)
    drawn = labels[w.order()]
    assert 0.3 < drawn.mean() < 0.7  # class 1 is 10% of the data but ~50% of the draws


def test_pack_cli_rafdb_with_stratified_validation(tmp_path, make_image):
    from rtfer.training.__main__ import main

    lines = []
    for i in range(1, 29):
        label = (i % 7) + 1
        lines.append(f"train_{i:05d}.jpg {label}")
        make_image(tmp_path / "raf" / "basic" / "Image" / "aligned" / f"train_{i:05d}_aligned.jpg", i)
    (tmp_path / "raf" / "basic" / "EmoLabel").mkdir(parents=True)
    (tmp_path / "raf" / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines))
    assert main(["pack", "rafdb", str(tmp_path / "raf"), "-o", str(tmp_path / "raf"), "--val-fraction", "0.25",
                 "--size", "16"]) == 0
    train, val = load_packed(tmp_path / "raf_train.npz"), load_packed(tmp_path / "raf_val.npz")
    assert len(train) == 21 and len(val) == 7 and val.class_counts().tolist() == [1] * 7
    assert train.images.shape[1:] == (16, 16, 1)
    assert main(["pack", "rafdb", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.npz")]) == 2


def test_mix_folder_labels_blends_the_original_fer2013_label_into_soft_targets():
    from rtfer.training.data import Packed, mix_folder_labels

    soft = np.zeros((3, 7), np.float32)
    soft[:, CLASSES.index("surprise")] = 1.0  # FER+ says surprise for all three
    files = np.array(["fer2013/train/fear/a.jpg", "fer2013/train/surprise/b.jpg", "fer2013/train/disgust/c.jpg"])
    data = Packed(np.zeros((3, 4, 4, 1), np.uint8), np.zeros(3, np.int64), soft, files)
    mixed = mix_folder_labels(data, 0.25)
    s, f, d = CLASSES.index("surprise"), CLASSES.index("fear"), CLASSES.index("disgust")
    assert mixed.soft[0, s] == pytest.approx(0.75) and mixed.soft[0, f] == pytest.approx(0.25)
    assert mixed.soft[1, s] == pytest.approx(1.0)
    assert mixed.soft[2, d] == pytest.approx(0.25)
    np.testing.assert_allclose(mixed.soft.sum(axis=1), 1.0, rtol=1e-6)
    assert (mixed.labels == data.labels).all() and data.soft[0, f] == 0.0  # labels and the input stay as they were
    assert mix_folder_labels(data, 0.0) is data
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        mix_folder_labels(data, 1.5)
    with pytest.raises(InputError, match="file paths"):
        mix_folder_labels(Packed(data.images, data.labels, soft), 0.25)
    with pytest.raises(InputError, match="not an emotion class"):
        mix_folder_labels(Packed(data.images, data.labels, soft, np.array(["x/a.jpg", "x/b.jpg", "y/c.jpg"])), 0.25)
