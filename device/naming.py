"""How a label is named to a person: a species by its names, a family or genus as a group.

The label space names most taxa by species ("Common Raccoon", *Procyon lotor*) but three insect
labels by family (48124 Tettigoniidae, 52884 Gryllidae, 50186 Cicadidae): a detection of one
says "a cicada was heard", never which cicada. Shown like a species ("Typical Cicadas
Cicadidae"), a guide would read it as one species and a researcher could count it as one. So
every place that names a label (the guide's screen, the CLI's lines, the exports) asks
`taxon_name` and shows what it says:

- species: "Common Raccoon (Procyon lotor)"; a species whose common name is its scientific
  one (many insects in taxonomy.csv) is named once, "Ragoniella pulchella";
- family: "a cicada (Cicadidae)", "a katydid (Tettigoniidae)", "a cricket (Gryllidae)";
  another family: "an insect of the family Acrididae" ("a member of the family X" when the
  class is unknown);
- genus: "a frog of the genus Dendropsophus" ("a member of the genus X" likewise);
- no names at all (a bundle whose label facts the device never saw): the bare label.

The rank is `device.domain.taxon_rank`'s. Plain Python with no imports beyond it: device code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from device.domain import taxon_rank

FAMILY_SINGULAR = {
    "Cicadidae": "a cicada",
    "Tettigoniidae": "a katydid",
    "Gryllidae": "a cricket",
}
"""What a person calls one member of each family the label space names. taxonomy.csv gives the
family's plural vernacular ("Typical Cicadas", "Katydids", "True Crickets"), whose qualifiers
tell the family from its relatives (hairy cicadas, mole crickets) in a list of families but
read oddly for one animal heard ("a typical cicada"), and English plurals do not undo by rule
("Flies", "Mantises"); so the families we name get their singular here, and any other family
the general wording below. The plural stays the vernacular name in the exports (Darwin Core's
vernacularName)."""
CLASS_MEMBER = {
    "Aves": "a bird",
    "Amphibia": "a frog",
    "Insecta": "an insect",
    "Mammalia": "a mammal",
}
"""One member of each class the device names, with its article, for a family or genus not in
`FAMILY_SINGULAR` ("an insect of the family Acrididae"). Amphibia is "a frog": the label
space's amphibians are all frogs and toads (caecilians and salamanders do not call)."""
ANY_MEMBER = "a member"
"""The same when the class is unknown: "a member of the family X"."""


@dataclass(frozen=True)
class TaxonName:
    """A label's names as a person reads them (see the module docstring for the rule)."""

    label: str
    rank: str | None
    """'species', 'genus', 'family', or None when the label has no scientific name."""
    common: str
    """The reader's words: "Common Raccoon", "a cicada", "an insect of the family Acrididae";
    '' for a species known only by its scientific name."""
    scientific: str
    """The scientific name ('' when the label has none)."""

    @property
    def italic(self) -> bool:
        """Whether the scientific name is set in italics: genus and species names are, family
        names are not (the zoological convention), so a family never looks like a binomial."""
        return self.rank in ("species", "genus")

    @property
    def heading(self) -> str:
        """The first thing shown (a list's bold line): the common words, else the scientific
        name, else the label."""
        return self.common or self.scientific or self.label

    @property
    def subline(self) -> str:
        """What goes under or after the heading: the scientific name of a species, "family
        Cicadidae" / "genus Dendropsophus" for a group; '' when the heading already says it."""
        if not self.scientific or self.scientific in self.heading:
            return ""
        if self.rank in ("family", "genus"):
            return f"{self.rank} {self.scientific}"
        return self.scientific

    @property
    def text(self) -> str:
        """One line: "Common Raccoon (Procyon lotor)", "a cicada (Cicadidae)", "Ragoniella
        pulchella", "an insect of the family Acrididae", or the bare label."""
        return self.text_with()

    def text_with(self, *extra: str) -> str:
        """`text` with more facts inside its parentheses: text_with("Insecta") gives "a cicada
        (Cicadidae, Insecta)", "Common Raccoon (Procyon lotor, Mammalia)", "Ragoniella pulchella
        (Insecta)". Empty extras are left out."""
        inside = [part for part in extra if part]
        if self.common and self.scientific and self.scientific not in self.common:
            inside.insert(0, self.scientific)
        return f"{self.heading} ({', '.join(inside)})" if inside else self.heading


def _clean(value: str | None) -> str:
    return " ".join((value or "").split())


@lru_cache(maxsize=1024)
def taxon_name(scientific_name: str | None, common_name: str | None, class_name: str | None = None,
               label: str = "") -> TaxonName:
    """Name a label as a person reads it.

    Args:
        scientific_name: The label's scientific name (taxonomy.csv's; None or '' when unknown).
            Its rank decides the wording (`device.domain.taxon_rank`).
        common_name: The taxonomy's common name. For a species it is shown; for a family or
            genus it is the group's plural vernacular, which `FAMILY_SINGULAR` replaces.
        class_name: 'Aves', 'Amphibia', 'Insecta' or 'Mammalia' (words a group not in the
            table is named with).
        label: The primary label, shown when there is no name at all.

    Returns:
        The names (`.text` for one line, `.heading`/`.subline` for two): one shared frozen
        object per distinct input, since an export names every row of a few hundred labels
        (3-4.5 us a call saved per row of 100,000).
    """
    scientific, common = _clean(scientific_name), _clean(common_name)
    rank = taxon_rank(scientific)
    if rank == "family":
        member = FAMILY_SINGULAR.get(scientific) or f"{CLASS_MEMBER.get(_clean(class_name), ANY_MEMBER)} of the family {scientific}"
        return TaxonName(label, rank, member, scientific)
    if rank == "genus":
        return TaxonName(label, rank, f"{CLASS_MEMBER.get(_clean(class_name), ANY_MEMBER)} of the genus {scientific}", scientific)
    if common and common.casefold() == scientific.casefold():
        common = ""  # "Ragoniella pulchella (Ragoniella pulchella)" says it twice
    return TaxonName(label, rank, common, scientific)


def display_name(scientific_name: str | None, common_name: str | None, class_name: str | None = None,
                 label: str = "") -> str:
    """`taxon_name(...).text`: the one-line name ("a cicada (Cicadidae)")."""
    return taxon_name(scientific_name, common_name, class_name, label).text
