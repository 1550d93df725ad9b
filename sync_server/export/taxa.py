"""Taxonomy the detection rows do not carry: the kingdom and rank Darwin Core asks for.

The device names each label's class (Aves, Amphibia, Insecta, Mammalia) and scientific name;
GBIF also wants the kingdom, which follows from the class (the rank: `device.domain.taxon_rank`).
"""

from __future__ import annotations

KINGDOMS = {"Aves": "Animalia", "Amphibia": "Animalia", "Insecta": "Animalia", "Mammalia": "Animalia"}
"""Kingdom by class: every class the device names is an animal's."""


def kingdom(class_name: str | None) -> str:
    """The kingdom of a class the device names ('' for an unknown or missing class)."""
    return KINGDOMS.get(class_name or "", "")
