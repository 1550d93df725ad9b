"""Raven selection tables of ingested detections, read back by crowsetta's Raven reader: one table
per device and source, every selection at its offsets with its label, a band the audio holds."""

from __future__ import annotations

import csv
import zipfile

import crowsetta

from device.naming import display_name
from sync_server.db.queries import DetectionFilter, detection_rows
from sync_server.export.formats import export
from sync_server.export.raven import ANNOTATION_COLUMN, COLUMNS, DEFAULT_HIGH_FREQ_HZ, INDEX, TABLE_SUFFIX, table_name


def unpack(path, folder):
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
        return sorted(archive.namelist())


def test_one_table_per_device_and_source_that_crowsetta_reads_back(filled, tmp_path):
    out = tmp_path / "raven.zip"
    summary = export(filled.server, "raven", DetectionFilter(), out)
    rows = detection_rows(filled.server)
    assert summary.rows == len(rows)
    names = unpack(out, tmp_path / "tables")
    sources = {(r["device_id"], r["source"]) for r in rows}
    assert len(names) == len(sources) + 1 and INDEX in names  # 3.ogg on two devices: two tables
    with open(tmp_path / "tables" / INDEX, newline="") as handle:
        index = {r["table"]: r for r in csv.DictReader(handle, delimiter="\t")}
    assert {(r["device_id"], r["source"]) for r in index.values()} == sources
    for (device_id, source) in sources:
        name = table_name(device_id, source)
        assert name.endswith(TABLE_SUFFIX) and name in names
        table = crowsetta.formats.bbox.Raven.from_file(tmp_path / "tables" / name, annot_col=ANNOTATION_COLUMN)
        mine = [r for r in rows if (r["device_id"], r["source"]) == (device_id, source)]
        assert int(index[name]["selections"]) == len(mine) == len(table.df)
        assert list(table.df["annotation"]) == [display_name(r["scientific_name"], r["common_name"], r["class_name"],
                                                             r["label"]) for r in mine]
        assert [str(code) for code in table.df["Species Code"]] == [r["label"] for r in mine]
        assert list(table.df["begin_time_s"]) == [r["start_s"] for r in mine]
        assert list(table.df["end_time_s"]) == [r["end_s"] for r in mine]
        assert list(table.df["Selection"]) == list(range(1, len(mine) + 1))
        assert list(table.df["Detection ID"]) == [r["detection_id"] for r in mine]
        assert list(table.df["Confidence"]) == [r["confidence"] for r in mine]
        assert (table.df["low_freq_hz"] == 0).all() and list(table.df.columns[:3]) == ["Selection", "View", "Channel"]
        for read, row in zip(table.df.to_dict("records"), mine):  # the band: the clip's Nyquist, else the default
            high = row["clip"]["sample_rate_hz"] / 2 if row["clip"] else DEFAULT_HIGH_FREQ_HZ
            assert read["high_freq_hz"] == high and read["Verification"] == row["verification_status"]
    tinamou = crowsetta.formats.bbox.Raven.from_file(
        tmp_path / "tables" / table_name("pi-h02", "audio/birds/Cryp.soui.wav"), annot_col=ANNOTATION_COLUMN)
    assert list(tinamou.df["high_freq_hz"]) == [4500.0]  # its 9 kHz clip
    assert list(tinamou.df["Scientific Name"]) == ["Crypturellus soui"]
    assert list(tinamou.df["annotation"]) == ["Little Tinamou (Crypturellus soui)"]
    assert list(tinamou.df["Taxon Rank"]) == ["species"]


def test_a_family_level_detection_reads_as_a_family(filled, tmp_path):
    """The cicada (label 50186, family Cicadidae) is "a cicada (Cicadidae)", rank family: never
    "Typical Cicadas" in the column a reader takes for the species."""
    out = tmp_path / "raven.zip"
    export(filled.server, "raven", DetectionFilter(species=("50186",)), out)
    unpack(out, tmp_path / "tables")
    table = crowsetta.formats.bbox.Raven.from_file(
        tmp_path / "tables" / table_name("pi-h02", "audio/insects/minetest_sounds_cicada_01.ogg"),
        annot_col=ANNOTATION_COLUMN)
    (read,) = table.df.to_dict("records")
    assert read["annotation"] == "a cicada (Cicadidae)" and read["Taxon Rank"] == "family"
    assert (str(read["Species Code"]), read["Scientific Name"], read["Common Name"]) == ("50186", "Cicadidae",
                                                                                         "Typical Cicadas")


def test_the_tables_annotate_the_real_source_recording(filled, tmp_path):
    """Opened with the recording it annotates, every selection lies inside the audio."""
    import soundfile as sf

    out = tmp_path / "raven.zip"
    export(filled.server, "raven", DetectionFilter(device_id="pi-h02"), out)
    names = unpack(out, tmp_path / "tables")
    source = "audio/birdclef_train_audio/3.ogg"
    table = crowsetta.formats.bbox.Raven.from_file(
        tmp_path / "tables" / table_name("pi-h02", source), annot_col=ANNOTATION_COLUMN,
        audio_path=filled.shared_data / source)
    duration = sf.info(str(table.audio_path)).duration
    assert len(table.df) == 4 and (table.df["end_time_s"] <= duration).all()
    assert table_name("pi-h03", source) not in names  # the filter held


def test_an_empty_selection_is_an_archive_with_only_the_index_and_names_are_safe(filled, tmp_path):
    export(filled.server, "raven", DetectionFilter(species=("nobody",)), tmp_path / "none.zip")
    assert unpack(tmp_path / "none.zip", tmp_path / "none") == [INDEX]
    odd = table_name("pi-h02", "C:\\field\\tab\there/../H02 20230420.ogg")
    assert "/" not in odd and "\t" not in odd and " " not in odd and odd != table_name("pi-h02", "H02 20230420.ogg")
    assert COLUMNS[:7] == ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                           "High Freq (Hz)")
