"""AVE reader on a fixture tree in the real layout (faces/video.mp4 as every clip)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
from PIL import Image

from cmkd_cli.data.manifest import read_classes, read_manifest, resolve
from cmkd_cli.errors import DataError
from data_prep.ave import (
    AVEOptions,
    category_slug,
    event_times,
    parse_line,
    prepare_ave,
    record_id,
)
from tests.fixtures_layouts import ave_tree, skip_reasons


def test_one_record_per_annotation_line_with_frames_classes_and_skips(tmp_path: Path) -> None:
    root = ave_tree(tmp_path / "AVE_Dataset")
    out = tmp_path / "out"
    res = prepare_ave(AVEOptions(root=root, out=out, workers=1))

    records = {r.id: r for r in read_manifest(out)}
    # every annotation line is a sample: two events of one video in one split, one video's
    # events in two splits (ids stay unique per line)
    assert {k: (r.split, r.video) for k, r in records.items()} == {
        "0qvQIuQoODo/male_speech_man_speaking": ("train", "0qvQIuQoODo"),
        "-TCDqe327us/female_speech_woman_speaking": ("train", "-TCDqe327us"),
        "-TCDqe327us/male_speech_man_speaking": ("train", "-TCDqe327us"),
        "Gavpgq1WWh4/church_bell": ("val", "Gavpgq1WWh4"),
        "5KEPA_ORiVI/bark": ("test", "5KEPA_ORiVI"),
        "0qvQIuQoODo/female_speech_woman_speaking": ("test", "0qvQIuQoODo"),
    }
    male = records["0qvQIuQoODo/male_speech_man_speaking"]
    female = records["0qvQIuQoODo/female_speech_woman_speaking"]
    assert (male.label, male.start, male.end, male.quality) == (
        "Male speech, man speaking",
        1.0,
        4.0,
        "good",
    )
    assert female.label == "Female speech, woman speaking" and female.start == 1.0
    # 1 fps inside the event: three frames per 3 s segment, real JPEGs
    assert male.frames == [
        f"frames/0qvQIuQoODo/male_speech_man_speaking_{k:02d}.jpg" for k in range(3)
    ]
    assert Image.open(resolve(out, male.frames[1])).size == (1920, 1080)
    info = sf.info(str(resolve(out, male.audio)))
    assert (info.samplerate, info.channels) == (16000, 1) and 4.1 < info.duration < 4.3
    # classes come from Annotations.txt (all categories, sorted), not only the kept clips
    assert [c for c, _ in read_classes(out)] == [
        "Bark",
        "Church bell",
        "Female speech, woman speaking",
        "Frying (food)",
        "Male speech, man speaking",
    ]
    reasons = skip_reasons(out)
    assert "not a readable audio file" in reasons[str(root / "AVE" / "2An2JMGMbbs.mp4")]
    assert "does not exist" in reasons[str(root / "AVE" / "E_1Asfq8it4.mp4")]
    assert "event segment 0-0 s is empty" in reasons[f"{root / 'trainSet.txt'}:4"]
    assert any(p.endswith("testSet.txt:4") for p in reasons)  # the malformed line
    assert (res.records, res.skipped, res.splits) == (6, 4, {"test": 2, "train": 3, "val": 1})
    sizes = {(c.split, c.what): (c.found, c.expected) for c in res.completeness}
    assert sizes == {
        ("train", "records"): (3, 3_339),
        ("val", "records"): (1, 402),
        ("test", "records"): (2, 402),
        ("all", "classes"): (4, 28),
    }

    again = prepare_ave(AVEOptions(root=root, out=out, workers=1))
    assert (again.decoded, again.reused, again.records) == (0, 8, 6)


def test_ids_are_unique_per_line_and_a_repeated_line_is_reported(tmp_path: Path) -> None:
    assert category_slug("Male speech, man speaking") == "male_speech_man_speaking"
    assert category_slug("Frying (food)") == "frying_food"
    taken = {"vid/bark"}
    assert record_id("vid", "Bark", 0, 2, taken) == "vid/bark-0-2"
    assert record_id("vid", "Church bell", 0, 2, taken) == "vid/church_bell"
    root = ave_tree(tmp_path / "AVE_Dataset")
    val = root / "valSet.txt"
    val.write_text(
        val.read_text() + "Church bell&Gavpgq1WWh4&good&0&2\nBark&5KEPA_ORiVI&good&0&2\n"
    )
    out = tmp_path / "out"
    prepare_ave(AVEOptions(root=root, out=out, workers=1))
    records = {r.id: r for r in read_manifest(out)}
    assert records["5KEPA_ORiVI/bark-2-4"].split == "test"  # another segment: its own id
    assert records["5KEPA_ORiVI/bark"].split == "val"
    assert "repeats valSet.txt (val)" in skip_reasons(out)[str(val)]


def test_event_times_and_line_parsing() -> None:
    assert event_times(2, 4, 1.0) == [2.5, 3.5]
    assert event_times(0, 0.5, 1.0) == [0.5]  # a short event still gets one frame
    assert event_times(0, 1, 2.0) == [0.25, 0.75]
    assert parse_line("Category&VideoID&Quality&StartTime&EndTime", "x") is None
    assert parse_line("Bark&id1&good&3&7\n", "x") == ("Bark", "id1", "good", 3.0, 7.0)
    with pytest.raises(DataError, match="x:2: event segment 5-5 s is empty"):
        parse_line("Bark&id1&good&5&5", "x:2")


def test_missing_split_file_is_one_error(tmp_path: Path) -> None:
    root = ave_tree(tmp_path / "AVE_Dataset")
    (root / "valSet.txt").unlink()
    with pytest.raises(DataError, match=r"valSet\.txt: AVE split file does not exist"):
        prepare_ave(AVEOptions(root=root, out=tmp_path / "out", workers=1))
