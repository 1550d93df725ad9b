"""How much audio taught the head each label, and where it came from (the manifest's
`labels[i].training`, device/bundle/labels.py: `TrainingSupport`).

Counted on the clips that trained the committed head (the held-out test set is not among them),
before any clip is split for validation: a recording is counted once however many parts it is
held out in. "Recordings" are independent sources (`trainer.labelled.source_group`): three
clips edited out of one video are one recording.
"""

from __future__ import annotations

from trainer.labelled import SOURCE_URL, LabelledClip, clip_duration

COLLECTIONS = {
    "exploring-curiosity/MLOps": "BirdCLEF 2025 train_audio (xeno-canto)",
    "colombianfrogs/sounds": "colombianfrogs/sounds (Colombian advertisement-call descriptions, IAvH-CSA)",
    "panchorivasf/Rthoptera": "Rthoptera R package (F. Rivas Fuenzalida, C. Brizio / xeno-canto)",
    "lhf36/Learn-the-insect-sounds": "Learn-the-insect-sounds (D. Marshall, K. Hill)",
    "RedundantC/wis_part1": "Minetest sounds mod",
}
"""Source repository -> the collection a researcher would recognise (unknown repos pass through)."""

NOTES = {
    "41970": "one 1.4 s edited clip of one captive jaguar (a zoo video): weak data",
    "41663": "three ~1 s edited clips cut from one video of raccoons (one source): weak data",
    "52884": "family level (any true cricket); the freesound cricket's family is inferred from its "
             "4.8 kHz carrier (weak label)",
}
"""Per label, what the counts alone do not say."""

FAMILY_NOTE = "family level: any species of the family, named as the family"


def _source(clip: LabelledClip) -> str:
    name = COLLECTIONS.get(clip.source, clip.source or "not stated")
    found = SOURCE_URL.search(clip.license)
    return f"{name} ({found.group(1).split('/', 1)[0]})" if found else name


def training_support(clips: list[LabelledClip], labels: list[dict[str, str]]) -> dict[str, dict]:
    """label -> {"recordings": independent sources, "seconds", "sources": [collections], "note"}.

    Args:
        clips: the clips that trained the head, before validation splits them.
        labels: the head's manifest label entries (the family-level ones are named so in the note).
    """
    out = {}
    for label in labels:
        lid = label["primary_label"]
        mine = [c for c in clips if c.label == lid]
        groups = {c.group_id for c in mine}
        note = NOTES.get(lid, "")
        if label["scientific_name"].endswith("idae") and lid not in NOTES:
            note = FAMILY_NOTE
        elif not note and len(groups) == 1:
            note = "one recording (validated on its time-disjoint halves)"
        out[lid] = {"recordings": len(groups), "seconds": round(sum(clip_duration(c) for c in mine), 2),
                    "sources": sorted({_source(c) for c in mine}), "note": note}
    return out
