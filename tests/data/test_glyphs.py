"""Tests for the offline "glyphs" demo dataset (metrictransfer.data.glyphs)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.ft2font import FT2Font
from PIL import Image

from metrictransfer.data import glyphs
from metrictransfer.data.glyphs import (
    FORMAT_VERSION,
    LOOKALIKE_GROUPS,
    GlyphsArrays,
    GlyphsDataset,
    build_glyphs,
    default_cache_dir,
    detect_lookalike_pairs,
    glyph_cache_path,
    glyph_classes,
    load_glyphs,
)

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("glyphs-cache")


@pytest.fixture(scope="module")
def arrays(cache_dir: Path) -> GlyphsArrays:
    """The default dataset, built once through the cache for the whole module."""
    return load_glyphs(cache_dir=cache_dir)


def assert_same(a: GlyphsArrays, b: GlyphsArrays) -> None:
    assert a.images.dtype == b.images.dtype == np.uint8
    assert a.images.tobytes() == b.images.tobytes()
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.font_ids, b.font_ids)
    np.testing.assert_array_equal(a.train_classes, b.train_classes)
    np.testing.assert_array_equal(a.test_classes, b.test_classes)
    assert a.chars == b.chars
    assert a.fonts == b.fonts


def recall_at_1(x: np.ndarray, y: np.ndarray, chunk: int = 512) -> float:
    """Euclidean 1-NN recall on flattened pixels, the query itself excluded by index."""
    x = x.reshape(len(x), -1).astype(np.float32)
    sq = (x * x).sum(axis=1)
    hits = 0
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        d = sq[start : start + chunk, None] - 2.0 * block @ x.T + sq[None, :]
        d[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        hits += int((y[d.argmin(axis=1)] == y[start : start + chunk]).sum())
    return hits / len(x)


# ------------------------------------------------------------------------------ classes


def test_classes_sorted_unique_and_sized() -> None:
    chars = glyph_classes()
    assert len(chars) == len(set(chars))
    assert [ord(c) for c in chars] == sorted(ord(c) for c in chars)
    assert 130 <= len(chars) <= 150
    assert set("0123456789") <= set(chars)


def test_each_lookalike_group_contributes_at_most_one_class() -> None:
    kept = set(glyph_classes())
    members = [c for group in LOOKALIKE_GROUPS for c in group]
    assert len(members) == len(set(members)), "a character is in two groups"
    for group in LOOKALIKE_GROUPS:
        assert [c for c in group if c in kept] == [group[0]], group
    assert kept == set(glyphs.CANDIDATE_CHARS) - {c for g in LOOKALIKE_GROUPS for c in g[1:]}


def test_lookalike_table_matches_renders() -> None:
    """The explicit table equals the groups found by comparing renders, and no kept pair is alike."""
    pairs = detect_lookalike_pairs()
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.get(c, c) != c:
            c = parent[c]
        return c

    for a, b, _ in pairs:
        parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for c in {c for a, b, _ in pairs for c in (a, b)}:
        groups.setdefault(root(c), set()).add(c)
    detected = {frozenset(g) for g in groups.values()}
    assert detected == {frozenset(g) for g in LOOKALIKE_GROUPS}

    kept = set(glyph_classes())
    assert [p for p in pairs if p[0] in kept and p[1] in kept] == []


# ------------------------------------------------------------------------------ arrays


def test_array_shapes_and_types(arrays: GlyphsArrays) -> None:
    n = len(arrays.images)
    assert arrays.images.shape == (n, 32, 32) and arrays.images.dtype == np.uint8
    assert arrays.labels.shape == (n,) and arrays.labels.dtype == np.int64
    assert arrays.font_ids.shape == (n,) and arrays.font_ids.dtype == np.int64
    assert arrays.chars == glyph_classes()
    assert arrays.fonts == sorted(arrays.fonts)
    assert set(np.unique(arrays.labels)) == set(range(len(arrays.chars)))
    # 2 renders of each (class, font) pair, at least 10 fonts per class
    pairs, counts = np.unique(arrays.labels * 1000 + arrays.font_ids, return_counts=True)
    assert (counts == 2).all()
    assert np.bincount(pairs // 1000).min() >= 10


def test_fonts_come_from_matplotlib_families(arrays: GlyphsArrays) -> None:
    for name in arrays.fonts:
        assert (FONT_DIR / name).is_file()
        assert name.startswith(("DejaVu", "STIXGeneral", "cm")), name
        assert name not in {"cmsy10.ttf", "cmex10.ttf"} and "LastResort" not in name


def test_every_image_font_has_its_character(arrays: GlyphsArrays) -> None:
    cmaps = [FT2Font(os.fspath(FONT_DIR / name)).get_charmap() for name in arrays.fonts]
    for label, font_id in {(int(c), int(f)) for c, f in zip(arrays.labels, arrays.font_ids)}:
        ch = arrays.chars[label]
        assert cmaps[font_id].get(ord(ch), 0) != 0, (ch, arrays.fonts[font_id])
        assert glyphs.font_has_char(FONT_DIR / arrays.fonts[font_id], ch)


def test_font_check_rejects_symbol_encodings() -> None:
    # cmsy10 maps code 'a' to a turnstile symbol; DejaVu Sans Display has no letters at all.
    assert not glyphs.font_has_char(FONT_DIR / "cmsy10.ttf", "a")
    assert not glyphs.font_has_char(FONT_DIR / "DejaVuSansDisplay.ttf", "A")
    assert not glyphs.font_has_char(FONT_DIR / "cmr10.ttf", "\u0416")  # no Cyrillic in CM
    assert glyphs.font_has_char(FONT_DIR / "DejaVuSans.ttf", "\u0416")


def test_no_empty_images(arrays: GlyphsArrays) -> None:
    flat = arrays.images.reshape(len(arrays.images), -1)
    assert (flat.max(axis=1) >= 128).all()
    assert ((flat >= 64).sum(axis=1) >= 4).all()


def test_split_is_class_disjoint_and_complete(arrays: GlyphsArrays) -> None:
    train, test = arrays.train_classes, arrays.test_classes
    c = len(arrays.chars)
    assert np.intersect1d(train, test).size == 0
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(c))
    assert len(train) == (c + 1) // 2
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
    assert train.dtype == test.dtype == np.int64


def test_deterministic_for_seed(arrays: GlyphsArrays) -> None:
    assert_same(build_glyphs(seed=0), arrays)


def test_different_seed_differs(arrays: GlyphsArrays) -> None:
    other = build_glyphs(seed=1)
    assert other.chars == arrays.chars
    assert other.images.shape == arrays.images.shape
    assert not np.array_equal(other.images, arrays.images)
    assert not np.array_equal(other.train_classes, arrays.train_classes)


def test_params_change_shape() -> None:
    small = build_glyphs(seed=0, image_size=16, renders=1)
    assert small.images.shape[1:] == (16, 16)
    assert np.unique(small.labels * 1000 + small.font_ids).size == len(small.labels)


def test_raw_pixel_recall_at_1_on_test_split_is_low(arrays: GlyphsArrays) -> None:
    mask = np.isin(arrays.labels, arrays.test_classes)
    r1 = recall_at_1(arrays.images[mask], arrays.labels[mask])
    assert 0.1 < r1 < 0.5, r1


# ------------------------------------------------------------------------------ cache


def test_cache_path_names_every_parameter(tmp_path: Path) -> None:
    path = glyph_cache_path(seed=3, image_size=24, renders=5, cache_dir=tmp_path)
    assert path == tmp_path / f"glyphs-v{FORMAT_VERSION}-s3-r5-px24.npz"


def test_default_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METRICTRANSFER_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("METRICTRANSFER_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "metrictransfer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "metrictransfer"


def test_cache_round_trip(arrays: GlyphsArrays, cache_dir: Path) -> None:
    path = glyph_cache_path(cache_dir=cache_dir)
    assert path.is_file()
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temp files left behind
    stamp = path.stat().st_mtime_ns
    again = load_glyphs(cache_dir=cache_dir)
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert_same(again, arrays)


def test_env_var_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METRICTRANSFER_CACHE", str(tmp_path))
    small = load_glyphs(image_size=16, renders=1)
    assert (tmp_path / f"glyphs-v{FORMAT_VERSION}-s0-r1-px16.npz").is_file()
    assert_same(load_glyphs(image_size=16, renders=1), small)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str) -> None:
    kwargs = dict(seed=0, image_size=16, renders=1, cache_dir=tmp_path)
    good = load_glyphs(**kwargs)
    path = glyph_cache_path(**kwargs)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not an npz file" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")
    rebuilt = load_glyphs(**kwargs)
    assert_same(rebuilt, good)
    with np.load(path, allow_pickle=False) as npz:  # the file was repaired
        assert int(npz["format_version"]) == FORMAT_VERSION


# ------------------------------------------------------------------------------ Dataset


@pytest.mark.parametrize("split", ["train", "test"])
def test_dataset_items_and_labels(arrays: GlyphsArrays, cache_dir: Path, split: str) -> None:
    ds = GlyphsDataset(split=split, cache_dir=cache_dir)
    split_classes = arrays.train_classes if split == "train" else arrays.test_classes
    assert len(ds.classes) == len(split_classes)
    assert ds.classes == [arrays.chars[c] for c in split_classes]
    assert ds.labels.dtype == np.int64 and len(ds) == len(ds.labels)
    assert set(np.unique(ds.labels).tolist()) == set(range(len(ds.classes)))
    assert len(ds) == int(np.isin(arrays.labels, split_classes).sum())
    for i in (0, len(ds) // 2, len(ds) - 1):
        image, label = ds[i]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (32, 32)
        assert isinstance(label, int) and label == int(ds.labels[i])
        channels = np.asarray(image)
        assert (channels[..., 0] == channels[..., 1]).all() and (channels[..., 0] == ds.images[i]).all()


def test_dataset_num_classes(cache_dir: Path) -> None:
    ds = GlyphsDataset(split="test", num_classes=3, cache_dir=cache_dir)
    assert len(ds.classes) == 3
    assert sorted(np.unique(ds.labels).tolist()) == [0, 1, 2]
    full = GlyphsDataset(split="test", cache_dir=cache_dir)
    assert ds.classes == full.classes[:3]
    with pytest.raises(ValueError, match="num_classes"):
        GlyphsDataset(split="test", num_classes=len(full.classes) + 1, cache_dir=cache_dir)


def test_dataset_bad_split(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="validation") as info:
        GlyphsDataset(split="validation", cache_dir=cache_dir)
    assert "train" in str(info.value) and "test" in str(info.value)
