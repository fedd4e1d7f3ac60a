"""The order a request tries a model's deployments in.

By ``priority`` level (lower first), in list order within a level. A level where any
deployment sets a ``weight`` is instead drawn in weighted random order for each
request (unweighted members count 1): weight 3 against weight 1 takes ~75 % of first
tries, and the other is still the failover target when the first fails.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import groupby

from proxy.tenants import Deployment


def ordered(deployments: Sequence[Deployment], rng: random.Random) -> list[Deployment]:
    if all(d.priority == 0 and d.weight is None for d in deployments):
        return list(deployments)  # the common case: the list as written
    out: list[Deployment] = []
    levels = sorted(deployments, key=lambda d: d.priority)  # stable: list order kept
    for _, group in groupby(levels, key=lambda d: d.priority):
        members = list(group)
        if any(d.weight is not None for d in members) and len(members) > 1:
            # Efraimidis-Spirakis: sorting by u ** (1 / w) is a weighted draw without
            # replacement, in one pass.
            members.sort(key=lambda d: rng.random() ** (1.0 / (d.weight or 1.0)),
                         reverse=True)
        out.extend(members)
    return out
