"""One loaded policy and what it needs at run time: the pipeline, the resolver, the resources.

Swapped whole on reload; a connection keeps the snapshot it started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from policymilter.checks import build_pipeline
from policymilter.dns import Resolver
from policymilter.pipeline import Pipeline
from policymilter.policy.model import Policy
from policymilter.resources import Resources, load_resources


@dataclass(frozen=True)
class Snapshot:
    """The policy in force and the pipeline built for it."""

    policy: Policy
    pipeline: Pipeline
    files: tuple[str, ...] = ()
    generation: int = 1
    resolver: Resolver = field(default_factory=Resolver)
    resources: Resources = field(default_factory=Resources)


def snapshot_for(policy: Policy, files: Sequence[str] = (), generation: int = 1,
                 pipeline: Pipeline | None = None, previous: Snapshot | None = None) -> Snapshot:
    """`previous`: the snapshot this one replaces; its DNS cache carries over if it still fits."""
    settings = policy.dns
    resolver = Resolver(settings.nameservers, settings.timeout, settings.lifetime, settings.cache_size,
                        settings.cache_max_ttl, previous.resolver if previous is not None else None)
    return Snapshot(policy, pipeline or build_pipeline(), tuple(files), generation, resolver,
                    load_resources(policy, previous.resources if previous is not None else None))
