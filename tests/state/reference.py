"""The limits' arithmetic written plainly, as the reference the stores are tested against
(state/model.py states it; sqlitestore.py computes it with tallies, redisstore.py in Lua)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from policymilter.state.model import Counter, Dimension, Exceeded


def over(counters: Iterable[Counter], members: Mapping[Dimension, Sequence[str]],
         used: Mapping[Dimension, Mapping[str, float]], pending: Mapping[Dimension, set[str]],
         now: float) -> Exceeded | None:
    """The first counter the new `members` would take past its limit, given the members `used`
    (member -> last used) and those `pending` (reserved by transactions in progress)."""
    for counter in counters:
        start = now - counter.per
        current = {m for m, when in used.get(counter.dimension, {}).items() if when > start}
        current |= pending.get(counter.dimension, set())
        adding = len(set(members.get(counter.dimension, ())) - current)
        if adding and len(current) + adding > counter.limit:
            return Exceeded(counter, len(current), adding)
    return None
