"""Raw collection readers: the real Flickr8k sample in both layouts, and malformed inputs."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import pytest

from scan.data.raw import (
    SPLIT_ALIASES,
    ImageRecord,
    assign_splits,
    read_image_folder,
    read_kaggle_captions,
    read_karpathy_json,
    select_split,
)
from scan.errors import DataError

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k-800"
needs_real = pytest.mark.skipif(not (REAL / "captions.txt").is_file(), reason="shared/data/flickr8k-800 not present")

CAPS = ["A dog runs .", "A brown dog , running .", 'A dog says "woof" .', "Dog .", "A dog on grass ."]


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded by the reader")


def _write_csv(root: Path, text: str, images: list[str], folder: str = "Images") -> Path:
    _touch_images(root / folder, images)
    (root / "captions.txt").write_text(text, encoding="utf-8")
    return root


def _csv_rows(name: str, caps: list[str]) -> str:
    out = []
    for c in caps:
        out.append(name + "," + ('"' + c.replace('"', '""') + '"' if ("," in c or '"' in c or "\n" in c) else c))
    return "\n".join(out) + "\n"


def _karpathy(images: list[dict]) -> dict:
    return {"dataset": "synthetic", "images": images}


def _entry(name: str, split: str, caps: list[str] = CAPS, **extra) -> dict:
    return {"filename": name, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in caps], **extra}


# -- the real data ------------------------------------------------------------------------------


@needs_real
def test_real_folder_prefers_karpathy_json():
    records = read_image_folder(REAL)
    assert len(records) == 800
    assert collections.Counter(r.split for r in records) == {"train": 600, "val": 100, "test": 100}
    assert all(len(r.captions) == 5 and all(c.strip() for c in r.captions) for r in records)
    assert all(r.path.is_file() and r.path.parent.name == "images" for r in records[:20])
    assert len(select_split(records, "dev")) == len(select_split(records, "val")) == 100
    assert len(select_split(records, "train")) == 600


@needs_real
def test_real_kaggle_csv_agrees_with_json():
    from_csv = read_kaggle_captions(REAL)
    from_json = read_karpathy_json(REAL / "dataset_flickr8k_800.json")
    assert [r.filename for r in from_csv] == [r.filename for r in from_json]
    assert [r.captions for r in from_csv] == [r.captions for r in from_json]
    assert all(r.split == "" for r in from_csv)
    split = assign_splits(from_csv)  # default: min(1000, N // 8) = 100 each
    assert collections.Counter(r.split for r in split) == {"train": 600, "val": 100, "test": 100}


# -- Kaggle CSV -----------------------------------------------------------------------------------


def test_csv_quotes_commas_tabs_and_order(tmp_path):
    caps_b = ["B one , with a comma .", 'B "quoted" word .', "B three\twith a tab .", "B four .", "B five ."]
    rows = _csv_rows("b.jpg", caps_b[:2]) + _csv_rows("a.jpg", CAPS) + _csv_rows("b.jpg", caps_b[2:])
    text = "image,caption\n" + rows
    root = _write_csv(tmp_path, text, ["a.jpg", "b.jpg"], folder="images")
    records = read_kaggle_captions(root)
    assert [r.filename for r in records] == ["b.jpg", "a.jpg"]  # order of first appearance
    assert records[0].captions[:3] == ["B one , with a comma .", 'B "quoted" word .', "B three with a tab ."]
    assert records[1].captions == CAPS
    assert records[0].path == root / "images" / "b.jpg"


def test_csv_missing_header_names_file_and_line(tmp_path):
    root = _write_csv(tmp_path, _csv_rows("a.jpg", CAPS), ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:1: .*header"):
        read_kaggle_captions(root)


def test_csv_missing_image_names_line(tmp_path):
    text = "image,caption\n" + _csv_rows("a.jpg", CAPS) + _csv_rows("gone.jpg", CAPS)
    root = _write_csv(tmp_path, text, ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:7: field 'image': image file not found: .*gone\.jpg"):
        read_kaggle_captions(root)


def test_csv_bad_row_and_empty_caption_name_line(tmp_path):
    root = _write_csv(tmp_path, "image,caption\n" + _csv_rows("a.jpg", CAPS[:2]) + "a.jpg,x,y\n", ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:4: expected 2 fields"):
        read_kaggle_captions(root)
    root2 = _write_csv(tmp_path / "two", "image,caption\n" + _csv_rows("a.jpg", CAPS[:3]) + 'a.jpg,"  "\n', ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:5: field 'caption': empty caption"):
        read_kaggle_captions(root2)


def test_csv_caption_count(tmp_path):
    root = _write_csv(
        tmp_path, "image,caption\n" + _csv_rows("a.jpg", CAPS) + _csv_rows("b.jpg", CAPS[:4]), ["a.jpg", "b.jpg"]
    )
    with pytest.raises(DataError, match=r"captions\.txt:7: image 'b.jpg' has 4 caption\(s\), needs 5"):
        read_kaggle_captions(root)
    with pytest.warns(UserWarning, match=r"1 image\(s\) have more than 4 captions; keeping the first 4"):
        assert len(read_kaggle_captions(root, captions_per_image=4)[0].captions) == 4  # extras truncated
    assert [len(r.captions) for r in read_kaggle_captions(root, captions_per_image=None)] == [5, 4]
    root6 = _write_csv(tmp_path / "six", "image,caption\n" + _csv_rows("a.jpg", [*CAPS, "Sixth ."]), ["a.jpg"])
    with pytest.warns(UserWarning, match=r"more than 5 captions; keeping the first 5 of each: 'a.jpg' \(6\)"):
        records = read_kaggle_captions(root6)
    assert records[0].captions == CAPS


# -- Karpathy JSON --------------------------------------------------------------------------------


def test_json_reads_splits_and_coco_filepath(tmp_path):
    _touch_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    _touch_images(tmp_path / "images" / "val2014", ["c.jpg"])
    data = _karpathy([_entry("a.jpg", "train"), _entry("b.jpg", "restval"), _entry("c.jpg", "val", filepath="val2014")])
    (tmp_path / "dataset_coco.json").write_text(json.dumps(data))
    records = read_image_folder(tmp_path)  # the JSON is found in the folder
    assert [r.split for r in records] == ["train", "restval", "val"]
    assert records[2].path == tmp_path / "images" / "val2014" / "c.jpg"
    assert [r.filename for r in select_split(records, "train")] == ["a.jpg", "b.jpg"]  # restval joins train
    assert [r.filename for r in select_split(records, "dev")] == ["c.jpg"]
    assert SPLIT_ALIASES["dev"] == ("val",)
    with pytest.raises(ValueError, match="unknown split"):
        select_split(records, "validation")


def test_json_errors_name_file_and_field(tmp_path):
    _touch_images(tmp_path / "images", ["a.jpg"])
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps(_karpathy([_entry("a.jpg", "train"), {"split": "train", "sentences": []}])))
    with pytest.raises(DataError, match=r"dataset_x\.json: field 'images\[1\]\.filename'"):
        read_karpathy_json(path)
    path.write_text(json.dumps(_karpathy([_entry("a.jpg", "train", caps=CAPS[:3])])))
    with pytest.raises(DataError, match=r"field 'images\[0\]\.sentences': image 'a.jpg' has 3 caption"):
        read_karpathy_json(path)
    path.write_text(json.dumps(_karpathy([_entry("missing.jpg", "test")])))
    with pytest.raises(DataError, match=r"images\[0\]\.filename'.*image file not found"):
        read_karpathy_json(path)
    path.write_text('{"images": [\n  {"filename": "a.jpg",,}\n]}')
    with pytest.raises(DataError, match=r"dataset_x\.json:2: not valid JSON"):
        read_karpathy_json(path)


# -- splits and folder dispatch -------------------------------------------------------------------


def test_assign_splits_is_deterministic_and_order_free():
    records = [ImageRecord(f"{i:04d}.jpg", Path(f"{i:04d}.jpg"), "", ["c"] * 5) for i in range(200)]
    a = assign_splits(records, dev=20, test=0.1)
    b = assign_splits(list(reversed(records)), dev=20, test=0.1)
    assert collections.Counter(r.split for r in a) == {"train": 160, "val": 20, "test": 20}
    assert {r.filename: r.split for r in a} == {r.filename: r.split for r in b}
    assert [r.filename for r in a] == [r.filename for r in records]  # order kept
    c = assign_splits(records, dev=20, test=20, seed=1)
    assert {r.filename: r.split for r in a} != {r.filename: r.split for r in c}
    with pytest.raises(ValueError, match="no training images"):
        assign_splits(records, dev=100, test=100)


def test_folder_falls_back_to_csv_and_rejects_ambiguity(tmp_path):
    names = [f"{i}.jpg" for i in range(16)]
    root = _write_csv(tmp_path, "image,caption\n" + "".join(_csv_rows(n, CAPS) for n in names), names)
    records = read_image_folder(root, dev=2, test=3)
    assert collections.Counter(r.split for r in records) == {"train": 11, "val": 2, "test": 3}
    for name in ("dataset_a.json", "dataset_b.json"):
        (root / name).write_text(json.dumps(_karpathy([])))
    with pytest.raises(DataError, match="several Karpathy split files"):
        read_image_folder(root)
    with pytest.raises(DataError, match="no dataset_"):
        read_image_folder(tmp_path / "Images")


@needs_real
def test_real_csv_copy_without_json(tmp_path):
    # The Kaggle layout alone (capitalised Images/), on a few real rows.
    lines = (REAL / "captions.txt").read_text(encoding="utf-8").splitlines()
    head = lines[:1] + lines[1:16]
    names = sorted({line.split(",", 1)[0] for line in head[1:]})
    (tmp_path / "Images").mkdir()
    for name in names:
        shutil.copy(REAL / "images" / name, tmp_path / "Images" / name)
    (tmp_path / "captions.txt").write_text("\n".join(head) + "\n", encoding="utf-8")
    records = read_image_folder(tmp_path, dev=1, test=1)
    assert [r.filename for r in records] == [line.split(",", 1)[0] for line in head[1::5]]
    assert sorted(r.split for r in records) == ["test", "train", "val"]


# -- malformed input that used to pass silently ---------------------------------------------------


def test_csv_unbalanced_quote_names_the_line_it_opened(tmp_path):
    # Row 3 opens a quote it never closes: the csv module would read the rest of the file into that
    # one caption (dropping b.jpg and c.jpg without a word).
    text = (
        "image,caption\n"
        + _csv_rows("a.jpg", CAPS[:1])
        + 'a.jpg,"A dog runs\n'
        + _csv_rows("b.jpg", CAPS)
        + _csv_rows("c.jpg", CAPS)
    )
    root = _write_csv(tmp_path, text, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:3: unbalanced quote") as caught:
        read_kaggle_captions(root, captions_per_image=None)
    assert "close it or remove it" in str(caught.value)
    # A later quoted caption closes the stray quote: still the line where it opened.
    text2 = "image,caption\n" + 'a.jpg,"A dog runs\n' + _csv_rows("b.jpg", ["B, with a comma ."] * 5)
    root2 = _write_csv(tmp_path / "two", text2, ["a.jpg", "b.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:2: unbalanced quote"):
        read_kaggle_captions(root2, captions_per_image=None)
    # On the last line, with nothing after it.
    root3 = _write_csv(tmp_path / "three", "image,caption\n" + _csv_rows("a.jpg", CAPS) + 'a.jpg,"Six', ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:7: unbalanced quote"):
        read_kaggle_captions(root3, captions_per_image=None)


def test_json_unknown_split_names_field(tmp_path):
    _touch_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps(_karpathy([_entry("a.jpg", "train"), _entry("b.jpg", "validation")])))
    with pytest.raises(
        DataError,
        match=r"dataset_x\.json: field 'images\[1\]\.split': unknown split "
        r"'validation'.*train, val, test, restval",
    ):
        read_karpathy_json(path)


@pytest.mark.parametrize("name", ["../outside.jpg", "sub/../../outside.jpg", "{abs}"])
def test_image_names_outside_the_folder_are_refused(tmp_path, name):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"a file the data set must not reach")
    name = name.format(abs=outside)
    root = tmp_path / "data"
    _write_csv(root, "image,caption\n" + _csv_rows("a.jpg", CAPS) + _csv_rows(name, CAPS), ["a.jpg"])
    with pytest.raises(DataError, match=r"captions\.txt:7: field 'image': .*outside the image folder"):
        read_kaggle_captions(root)
    path = root / "dataset_x.json"
    path.write_text(json.dumps(_karpathy([_entry("a.jpg", "train"), _entry(name, "test")])))
    with pytest.raises(DataError, match=r"field 'images\[1\]\.filename': .*outside the image folder"):
        read_karpathy_json(path, root / "Images")
    path.write_text(json.dumps(_karpathy([_entry("outside.jpg", "test", filepath="../..")])))
    with pytest.raises(DataError, match=r"field 'images\[0\]\.filepath': .*outside the image folder"):
        read_karpathy_json(path, root / "Images")


def test_names_inside_the_folder_still_work(tmp_path):
    _touch_images(tmp_path / "Images" / "sub", ["a.jpg"])
    root = _write_csv(tmp_path, "image,caption\n" + _csv_rows("sub/../sub/a.jpg", CAPS), [])
    assert read_kaggle_captions(root)[0].path.is_file()


def test_non_utf8_files_name_the_line(tmp_path):
    root = _write_csv(tmp_path, "", ["a.jpg"])
    text = ("image,caption\n" + _csv_rows("a.jpg", CAPS)).encode("utf-8")
    (root / "captions.txt").write_bytes(text.replace(b"Dog .", b"Dog \xe9t\xe9 ."))  # Latin-1, line 5
    with pytest.raises(DataError, match=r"captions\.txt:5: not valid UTF-8.*save it as UTF-8"):
        read_kaggle_captions(root)
    path = tmp_path / "dataset_x.json"
    document = json.dumps(_karpathy([_entry("a.jpg", "train")]), indent=1).encode("utf-8")
    line = document[: document.index(b"Dog .")].count(b"\n") + 1
    path.write_bytes(document.replace(b"Dog .", b"Dog \xe9t\xe9 ."))
    with pytest.raises(DataError, match=rf"dataset_x\.json:{line}: not valid UTF-8"):
        read_karpathy_json(path, tmp_path / "Images")


def test_csv_byte_order_mark_is_accepted(tmp_path):
    root = _write_csv(tmp_path, "\ufeffimage,caption\n" + _csv_rows("a.jpg", CAPS), ["a.jpg"])
    assert read_kaggle_captions(root)[0].captions == CAPS


def test_no_first_draft_alias():
    import scan.data.raw

    assert not hasattr(scan.data.raw, "RawDataError")  # one name for one class: DataError
