"""A WordNet in miniature, in the database's own format, for the labeller's tests."""
from __future__ import annotations

from pathlib import Path

# A WordNet in miniature, in the database's own format: sea creatures under animal, two
# weekdays, a bridge, an irregular plural, and a verb with a synonym.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by Princeton University
00000001 03 n 01 entity 0 000 | that which exists
00000021 03 n 02 physical_entity 0 physical_thing 0 001 @ 00000001 n 0000 | a tangible entity
00000022 03 n 01 object 0 001 @ 00000021 n 0000 | a tangible thing
00000023 03 n 01 whole 0 001 @ 00000022 n 0000 | an assemblage of parts
00000024 03 n 02 living_thing 0 animate_thing 0 001 @ 00000023 n 0000 | a living entity
00000025 03 n 02 organism 0 being 0 001 @ 00000024 n 0000 | a living thing
00000002 05 n 01 animal 0 001 @ 00000025 n 0000 | a living organism
00000031 03 n 01 abstraction 0 001 @ 00000001 n 0000 | a general concept
00000032 03 n 01 measure 0 001 @ 00000031 n 0000 | how much there is
00000033 28 n 02 time_period 0 period 0 001 @ 00000032 n 0000 | an amount of time
00000034 28 n 01 calendar_day 0 001 @ 00000033 n 0000 | a day of the calendar
00000004 05 n 02 sea_creature 0 marine_animal 0 001 @ 00000002 n 0000 | an animal of the sea
00000003 05 n 01 whale 0 001 @ 00000004 n 0000 | a large sea mammal
00000005 05 n 01 shark 0 001 @ 00000004 n 0000 | a predatory fish
00000006 05 n 01 dolphin 0 001 @ 00000004 n 0000 | a small toothed whale
00000007 28 n 01 weekday 0 001 @ 00000034 n 0000 | any day except Sunday
00000008 28 n 01 monday 0 001 @ 00000007 n 0000 | the day after Sunday
00000009 28 n 01 friday 0 001 @ 00000007 n 0000 | the day before Saturday
00000010 06 n 01 bridge 0 000 | a structure over a river
00000011 05 n 01 goose 0 001 @ 00000002 n 0000 | a web-footed bird
00000012 05 n 01 dog 0 001 @ 00000002 n 0000 | a domestic animal
"""
INDEX_NOUN = """\
  1 license header
animal n 1 1 @ 1 1 00000002
whale n 1 1 @ 1 1 00000003
shark n 1 1 @ 1 1 00000005
dolphin n 1 1 @ 1 1 00000006
weekday n 1 1 @ 1 1 00000007
monday n 1 1 @ 1 1 00000008
friday n 1 1 @ 1 1 00000009
bridge n 1 0 1 1 00000010
goose n 1 1 @ 1 1 00000011
dog n 1 1 @ 1 1 00000012
sea_creature n 1 1 @ 1 0 00000004
entity n 1 0 1 0 00000001
"""
DATA_VERB = """\
  1 license header
00000201 31 v 02 expect 0 anticipate 0 000 | regard something as probable
"""
INDEX_VERB = """\
  1 license header
expect v 1 0 1 1 00000201
anticipate v 1 0 1 1 00000201
"""


def write_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.noun").write_text(DATA_NOUN)
    (folder / "index.noun").write_text(INDEX_NOUN)
    (folder / "noun.exc").write_text("geese goose\n")
    (folder / "data.verb").write_text(DATA_VERB)
    (folder / "index.verb").write_text(INDEX_VERB)
    for pos in ("adj", "adv"):
        (folder / f"data.{pos}").write_text("")
        (folder / f"index.{pos}").write_text("")
    return folder
