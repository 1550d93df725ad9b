"""The BirdCLEF layout reader: the real train.csv read whole, a tiny layout of real audio, and
every bad input named by file, line and reason."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from trainer.birdclef import (
    BirdclefError, load_birdclef, parse_rating, parse_secondary, read_taxonomy, read_train_csv, soundscape_examples,
)

EXTRA = ("type", "url", "scientific_name", "common_name", "author", "license")
"""Columns the real Kaggle train.csv has beyond the shared metadata's: they must be accepted."""
COLUMNS = ("primary_label", "secondary_labels", "type", "filename", "collection", "rating", "url", "latitude",
           "longitude", "scientific_name", "common_name", "author", "license")
"""Kaggle's column order (not the shared file's): the reader goes by name."""


def write_train_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})


def row(filename: str, primary: str, secondary: str = "['']", rating: str = "4.0", **extra) -> dict:
    return {"filename": filename, "primary_label": primary, "secondary_labels": secondary, "rating": rating,
            "collection": filename.split("/")[1][:2] if "XC" in filename else "iNat", "latitude": "6.5",
            "longitude": "-75.1", "type": "['call']", "url": "https://example.org", **extra}


@pytest.fixture
def layout(tmp_path, shared_data) -> Path:
    """A BirdCLEF layout of real recordings: three Allobates femoralis train clips, a jaguar and
    two raccoon clips, one real El Silencio soundscape."""
    audio = shared_data / "audio"
    copies = {
        "21211/XC882646.ogg": audio / "birdclef_train_audio/2.ogg",
        "21211/XC882647.ogg": audio / "birdclef_train_audio/3.ogg",
        "21211/XC882648.ogg": audio / "birdclef_train_audio/4.ogg",
        "41970/iNat100001.ogg": audio / "mammals/minetest_sounds_jaguar_saw.ogg",
        "41663/iNat100002.ogg": audio / "mammals/minetest_sounds_raccoon_chatter.ogg",
        "41663/iNat100003.ogg": audio / "mammals/minetest_sounds_raccoon_chatter_baby_01.ogg",
    }
    for name, source in copies.items():
        (tmp_path / "train_audio" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp_path / "train_audio" / name)
    (tmp_path / "train_soundscapes").mkdir()
    shutil.copyfile(audio / "elsilencio_soundscape/H02_20230420_074000.ogg",
                    tmp_path / "train_soundscapes/H02_20230420_074000.ogg")
    shutil.copyfile(shared_data / "taxonomy.csv", tmp_path / "taxonomy.csv")
    write_train_csv(tmp_path / "train.csv", [
        row("21211/XC882646.ogg", "21211"),
        row("21211/XC882647.ogg", "21211", "['41970', 'littin1']", rating="3.5"),
        row("21211/XC882648.ogg", "21211", rating="0.0"),
        row("41970/iNat100001.ogg", "41970", rating="0.0", latitude=""),
        row("41663/iNat100002.ogg", "41663", rating="0.0"),
        row("41663/iNat100003.ogg", "41663", rating="0.0"),
    ])
    return tmp_path


def rewrite(layout: Path, index: int, **changes) -> None:
    """Change one row of the layout's train.csv (row `index`, 0-based; line index + 2)."""
    with open(layout / "train.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[index].update(changes)
    write_train_csv(layout / "train.csv", rows)


def test_a_tiny_layout_of_real_audio_reads_into_examples(layout):
    data = load_birdclef(layout, all_classes=False)
    assert len(data.examples) == 6 and not data.duplicates
    second = data.examples[1]
    assert (second.clip_id, second.primary, second.secondary) == ("21211/XC882647.ogg", "21211", ("41970", "littin1"))
    assert second.rating == 3.5 and second.collection == "XC" and second.group == "XC882647"
    assert second.path == layout / "train_audio/21211/XC882647.ogg" and second.path.is_file()
    assert data.examples[2].rating is None, "BirdCLEF's 0.0 means unrated"
    assert data.examples[3].latitude is None and data.examples[4].latitude == 6.5
    assert data.labels[:3] == ["1139490", "1192948", "1194042"] and len(data.labels) == 206
    assert data.soundscapes == [layout / "train_soundscapes/H02_20230420_074000.ogg"]
    (background,) = soundscape_examples(data)
    assert background.background and background.primary is None
    assert "6 recordings (6 distinct) of 206 labels" in data.summary()


def test_the_soundscape_folder_is_optional(layout):
    shutil.rmtree(layout / "train_soundscapes")
    assert load_birdclef(layout).soundscapes == []


@pytest.fixture(scope="module")
def real(shared_data):
    taxonomy = read_taxonomy(shared_data / "taxonomy.csv")
    examples, duplicates = read_train_csv(shared_data / "train_metadata.csv", {t.label for t in taxonomy},
                                          Path("train_audio"))
    return taxonomy, examples, duplicates


def test_the_real_train_csv_reads_whole_with_its_30_duplicate_rows_counted_once(real):
    taxonomy, examples, duplicates = real
    assert len(taxonomy) == 206
    assert len(examples) == 28_564 and len({e.clip_id for e in examples}) == 28_564
    assert len(duplicates) == 30
    assert all(e.primary == e.clip_id.split("/")[0] for e in examples), "the kept row is the file's own folder's"
    first = duplicates[0]
    assert (first.line, first.filename, first.primary_label) == (4079, "greibi1/iNat1020465.ogg", "blcant4")
    # one iNaturalist observation filed under four species is one recording holding all four
    copies = [e for e in examples if e.group == "iNat1020465"]
    assert sorted(e.primary for e in copies) == ["blcant4", "greibi1", "pavpig2", "pirfly1"]
    assert all(set(e.labels) == {"blcant4", "greibi1", "pavpig2", "pirfly1"} for e in copies)
    assert len({e.group_id for e in examples}) == 28_552
    assert sum(e.rating is None for e in examples) == 7_978 - 30, "the 30 duplicate rows are all unrated iNat rows"
    with_secondary = [e for e in examples if e.secondary and e.group not in {c.group for c in copies}]
    assert len(with_secondary) > 2_000


def test_every_taxonomy_label_has_a_recording_in_the_real_file(real, shared_data, tmp_path):
    shutil.copyfile(shared_data / "taxonomy.csv", tmp_path / "taxonomy.csv")
    shutil.copyfile(shared_data / "train_metadata.csv", tmp_path / "train.csv")
    data = load_birdclef(tmp_path, check_audio=False, all_classes=True)
    assert len(data.examples) == 28_564 and len(data.duplicates) == 30


def test_secondary_and_rating_cells_parse_as_the_real_file_writes_them():
    assert parse_secondary("['']") == () and parse_secondary("[]") == ()
    assert parse_secondary("['grekis', 'yercac1']") == ("grekis", "yercac1")
    assert parse_secondary("['grekis', 'grekis']") == ("grekis",)
    assert parse_rating("0.0") is None and parse_rating("4.5") == 4.5 and parse_rating("5") == 5.0
    for bad in ("grekis", "['grekis'", "[1, 2]", "'grekis'"):
        with pytest.raises(ValueError, match="secondary_labels"):
            parse_secondary(bad)
    for bad in ("5.5", "-1", "nan", "good"):
        with pytest.raises(ValueError, match="rating"):
            parse_rating(bad)


@pytest.mark.parametrize("changes, message", [
    ({"primary_label": "dodo1"}, r"train.csv:4: primary_label 'dodo1' is not in the taxonomy"),
    ({"secondary_labels": "['41970', 'dodo1']"}, r"train.csv:4: secondary label\(s\) \['dodo1'\] not in the taxonomy"),
    ({"secondary_labels": "['41970'"}, r"train.csv:4: secondary_labels .* is not a list literal"),
    ({"rating": "6.0"}, r"train.csv:4: rating '6.0' is outside 0..5"),
    ({"rating": "-0.5"}, r"train.csv:4: rating '-0.5' is outside 0..5"),
])
def test_a_bad_row_is_named_by_file_line_and_reason(layout, changes, message):
    rewrite(layout, 2, **changes)
    with pytest.raises(BirdclefError, match=message):
        load_birdclef(layout)


def test_every_bad_row_is_listed_at_once(layout):
    rewrite(layout, 0, primary_label="dodo1")
    rewrite(layout, 4, rating="9")
    with pytest.raises(BirdclefError) as caught:
        load_birdclef(layout)
    assert len(caught.value.problems) == 2
    assert "train.csv:2:" in caught.value.problems[0] and "train.csv:6:" in caught.value.problems[1]


def test_missing_files_and_folders_are_named(layout):
    (layout / "train_audio/41663/iNat100003.ogg").unlink()
    with pytest.raises(BirdclefError, match=r"41663/iNat100003.ogg: audio file missing"):
        load_birdclef(layout)
    shutil.rmtree(layout / "train_audio")
    with pytest.raises(FileNotFoundError, match="train_audio folder missing"):
        load_birdclef(layout)
    (layout / "taxonomy.csv").unlink()
    with pytest.raises(FileNotFoundError, match="taxonomy.csv: taxonomy missing"):
        load_birdclef(layout, check_audio=False)
    with pytest.raises(FileNotFoundError, match="BirdCLEF folder missing"):
        load_birdclef(layout / "nowhere")


def test_a_missing_column_is_named(layout):
    text = (layout / "train.csv").read_text().replace("secondary_labels", "secondary", 1)
    (layout / "train.csv").write_text(text)
    with pytest.raises(BirdclefError, match=r"missing columns \['secondary_labels'\]"):
        load_birdclef(layout)


def test_an_empty_class_is_an_error_only_when_every_class_is_asked_for(layout):
    load_birdclef(layout)  # 3 of 206 labels: fine for a small run
    with pytest.raises(BirdclefError) as caught:
        load_birdclef(layout, all_classes=True)
    assert len(caught.value.problems) == 203
    assert "label '1139490' has no recording in train.csv (empty class)" in caught.value.problems[0]
    assert "... and 183 more" in str(caught.value)


def test_explorer_train_cache_decodes_a_layout_once_and_lists_what_it_cannot_read(layout, tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO
    from trainer.audio_cache import AudioCache

    def cache(*args):
        return subprocess.run([sys.executable, "-m", "trainer.cli", "cache", *map(str, args)],
                              capture_output=True, text=True, timeout=300, cwd=REPO)

    out = tmp_path / "cache"
    done = cache("--birdclef", layout, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "6 recordings" in done.stderr and "7 clips, 7 decoded, 0 already cached, 0 skipped" in done.stdout
    stored = AudioCache(out)
    assert len(stored.samples("train_soundscapes/H02_20230420_074000.ogg")) == 60 * 32_000
    again = cache("--birdclef", layout, "--out", out)
    assert again.returncode == 0 and "7 clips, 0 decoded, 7 already cached" in again.stdout

    broken = tmp_path / "broken.ogg"
    broken.write_bytes((layout / "train_audio/21211/XC882646.ogg").read_bytes()[:3000])  # a torn download
    listed = tmp_path / "confirmed.csv"
    listed.write_text(f"path,label\n{broken},21211\n", encoding="utf-8")
    done = cache("--list", listed, "--out", out)
    assert done.returncode == 1 and "1 skipped" in done.stdout and f"skipped {broken}" in done.stderr
    assert cache("--out", out).returncode == 2  # nothing to cache: a usage error
