"""Apply the tenant's action to each span of one text, and remember what to restore.

Actions: ``pseudonymize`` (a restorable placeholder), ``mask`` (all but the last four
characters become ``*``), ``hash`` (a keyed hash, not restorable), ``drop`` (removed),
``block`` (the request is refused with ``content_filter``, naming the entity type only).

``Redactions`` is per request (kept on the RequestContext): the placeholder -> value
mapping restoration uses, and the counts the decision log reports. Nothing in it
outlives the request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from proxy.errors import ContentFiltered
from proxy.pii.cache import Spans
from proxy.pii.pseudonyms import DIGITS, Pseudonymizer

Action = Literal["pseudonymize", "mask", "hash", "drop", "block"]
ACTIONS: tuple[Action, ...] = ("pseudonymize", "mask", "hash", "drop", "block")


@dataclass(slots=True, eq=False)
class Redactions:
    # placeholder -> original value: what restoration may put back (this request only).
    mapping: dict[str, str] = field(default_factory=dict)
    # (entity, value) -> placeholder, to give a value the same placeholder in every part.
    _given: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (action, entity)

    def placeholder(self, pseudonyms: Pseudonymizer, entity: str, value: str) -> str:
        found = self._given.get((entity, value))
        if found is not None:
            return found
        digits = DIGITS
        candidate = pseudonyms.placeholder(entity, value, digits)
        # Two values of one request sharing a short digest (p ~ 1e-7 per pair) would
        # make restoration ambiguous: the later one gets a longer, still stable, digest.
        while candidate in self.mapping and self.mapping[candidate] != value:
            digits += 4
            candidate = pseudonyms.placeholder(entity, value, digits)
        self._given[(entity, value)] = candidate
        self.mapping[candidate] = value
        return candidate


def mask(value: str) -> str:
    keep = 4 if len(value) >= 8 else 0
    return "*" * (len(value) - keep) + value[len(value) - keep:]


def redact(
    text: str,
    spans: Spans,
    actions: Mapping[str, Action],
    default: Action,
    pseudonyms: Pseudonymizer,
    state: Redactions,
    bare: bool = False,
) -> str:
    """``text`` with every span replaced. ``bare`` is for fields with a restricted
    alphabet (a message ``name``): every action becomes a placeholder without ``<>``."""
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for span in spans:  # non-overlapping, ordered (scanner.merge_overlaps)
        action = actions.get(span.entity, default)
        if action == "block":
            raise ContentFiltered(
                f"The request contains {span.entity}, which this tenant's pii policy blocks.",
                param="messages",
            )
        value = text[span.start:span.end]
        out.append(text[pos:span.start])
        if bare:
            replacement = state.placeholder(pseudonyms, span.entity, value).strip("<>")
        elif action == "pseudonymize":
            replacement = state.placeholder(pseudonyms, span.entity, value)
        elif action == "mask":
            replacement = mask(value)
        elif action == "hash":
            replacement = pseudonyms.hashed(span.entity, value)
        else:  # drop
            replacement = ""
        out.append(replacement)
        state.counts[(action, span.entity)] += 1
        pos = span.end
    out.append(text[pos:])
    return "".join(out)
