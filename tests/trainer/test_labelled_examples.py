"""One training-example type for every list: the shared recordings, the guides' confirmed clips,
BirdCLEF's train.csv (tests/trainer/test_birdclef.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.labelled import (
    Example, clips_from_recordings, example_from_clip, examples_from_recordings, read_examples, read_labelled_list,
)
from trainer.splits import split_by_recording, targets


def test_the_shared_recordings_become_examples_clip_for_clip(shared_data):
    clips = clips_from_recordings(shared_data)
    examples = examples_from_recordings(shared_data)
    assert len(examples) == len(clips) > 100
    for clip, example in zip(clips, examples):
        assert (example.path, example.primary, example.group_id, example.background, example.unsure) == (
            clip.path, clip.label, clip.group_id, clip.background, clip.unsure)
        assert example.clip_id == clip.key and example.rating is None and example.secondary == ()
    raccoons = [e for e in examples if e.primary == "41663"]
    assert len(raccoons) == 3 and len({e.group_id for e in raccoons}) == 1, "three clips of one video: one group"
    orni = next(e for e in examples if e.path.name == "orni.wav")
    assert orni.primary is None and orni.unsure == ("Insecta",)


def test_a_guides_confirmed_clips_list_is_a_plain_labelled_list(tmp_path, shared_data):
    """What a guide confirmed on the device comes back as path and label: the same reader, the
    same split, the same targets as every other list."""
    confirmed = tmp_path / "confirmed.csv"
    confirmed.write_text("path,label\n"
                         "audio/birdclef_train_audio/2.ogg,21211\n"
                         "audio/birdclef_train_audio/3.ogg,21211\n"
                         "audio/mammals/minetest_sounds_jaguar_saw.ogg,41970\n"
                         "audio/negatives/" + next((shared_data / "audio/negatives").iterdir()).name + ",\n")
    examples = read_examples(confirmed, root=shared_data)
    assert [e.primary for e in examples] == ["21211", "21211", "41970", None]
    assert all(isinstance(e, Example) and e.path.is_file() for e in examples)
    assert examples == [example_from_clip(c) for c in read_labelled_list(confirmed, root=shared_data)]
    split = split_by_recording(examples, fraction=0.5, seed=0)
    assert split.single_group_labels == ("41970",) and len(split.validation) == 1
    got = targets(examples, ["21211", "41970"])
    assert got.tolist() == [[1, 0], [1, 0], [0, 1], [0, 0]]


def test_a_list_without_a_label_column_is_refused_by_name(tmp_path):
    bad = tmp_path / "confirmed.csv"
    bad.write_text("path,species\nclip.wav,21211\n")
    with pytest.raises(ValueError, match=r"confirmed.csv: missing columns \['label'\]"):
        read_examples(bad)


def test_an_example_lists_its_primary_label_first():
    example = Example(clip_id="x", path=Path("x.ogg"), primary="grekis", secondary=("trokin",))
    assert example.labels == ("grekis", "trokin") and example.group_id == "x"
    assert Example(clip_id="y", path=Path("y.ogg"), primary=None).labels == ()
