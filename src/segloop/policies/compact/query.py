"""Reading a request into slots: what the compact policy compares its perception with.

The compact policy knows one language, the synthetic world's (``agent.synth``): a noun phrase of size,
colour, fill and shape words, optionally "only", a superlative, or a relation to an anchor noun phrase.
Its meaning is exact (``synth.resolve``), so the query is read by that grammar rather than learnt: a learnt
reader could only approximate what the grammar states, and the measurement that motivated this design
(docs/notes/zoomed-judge.md) showed the binding of words to what is seen is what fails to learn from the
reward, not what needs learning. The reading is lenient about order and articles ("red circle", "the circle
red") so that a person typing a request is understood; a word it does not know is reported, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from segloop.data.synth import COLOURS, FILLS, HEAD_ANY, RELATIONS, SHAPES, SIZES, SUPERLATIVES, NounPhrase

# Words that carry no content for this world; anything else outside the vocabulary is unknown.
FUNCTION_WORDS = frozenset({"the", "a", "an", "one", "only"})
_CLASSES: dict[str, tuple[str, ...]] = {"size": SIZES, "colour": tuple(COLOURS), "fill": FILLS, "shape": SHAPES}
_WORD = re.compile(r"[a-z0-9]+")
Kind = Literal["attribute", "unique", "superlative", "relation"]
KINDS: tuple[Kind, ...] = ("attribute", "unique", "superlative", "relation")


@dataclass(frozen=True)
class QuerySlots:
    """A request as the compact policy reads it: the target's noun phrase, and what singles it out."""

    kind: Kind
    target: NounPhrase
    superlative: str | None = None
    relation: str | None = None
    anchor: NounPhrase | None = None


def words(text: str) -> list[str]:
    """The request's words: lower case, letters and digits."""
    return _WORD.findall(text.lower())


def unknown_words(text: str) -> list[str]:
    """The request's content words outside the synthetic world's vocabulary, each once, in order."""
    known = FUNCTION_WORDS | {w for r in RELATIONS for w in r.split()} | set(SUPERLATIVES) | {HEAD_ANY}
    known |= {w for values in _CLASSES.values() for w in values}
    return list(dict.fromkeys(w for w in words(text) if w not in known))


def _noun_phrase(tokens: list[str]) -> NounPhrase:
    """The attributes named among ``tokens`` (the last word of a class wins: "red blue circle" is blue)."""
    found: dict[str, str] = {}
    for token in tokens:
        for name, values in _CLASSES.items():
            if token in values:
                found[name] = token
    return NounPhrase(**found)


def read_query(text: str) -> QuerySlots:
    """The slots of a request (unknown words are skipped; ask ``unknown_words`` first)."""
    tokens = words(text)
    relation, split = None, None
    for start in range(len(tokens)):
        for phrase in RELATIONS:
            span = phrase.split()
            if tokens[start : start + len(span)] == span:
                relation, split = phrase, (start, start + len(span))
                break
        if relation is not None:
            break
    head = tokens if split is None else tokens[: split[0]]
    superlative = next((t for t in head if t in SUPERLATIVES), None)
    target = _noun_phrase(head)
    if relation is not None and split is not None:
        return QuerySlots("relation", target, superlative, relation, _noun_phrase(tokens[split[1]:]))
    if superlative is not None:
        return QuerySlots("superlative", target, superlative)
    return QuerySlots("unique" if "only" in head else "attribute", target)
