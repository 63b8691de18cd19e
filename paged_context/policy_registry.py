"""Every eviction policy by name, the learned Page Controller among them: sessions, the
simulators and the benchmarks take a policy's name, and this is where a name becomes a
policy. It stands above both `policies` and `controller`, so neither needs the other's
names."""

from __future__ import annotations

from .controller import Controller, LearnedPolicy
from .policies import POLICIES, Policy, RandomPolicy

NAMES = (*POLICIES, LearnedPolicy.name)
ONLINE = tuple(n for n in NAMES if n not in POLICIES or not POLICIES[n].offline)  # a live session has no future to read


def make_policy(name: str, seed: int = 0, controller=None, shortlist: int | None = None) -> Policy:
    """A policy by name; `controller` is a checkpoint path or a loaded Controller for
    'learned', `shortlist` bounds its work per decision (see `LearnedPolicy`)."""
    if name == LearnedPolicy.name:
        return LearnedPolicy(controller if isinstance(controller, Controller) else Controller.load(controller), shortlist)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(NAMES)}")
    return RandomPolicy(seed) if name == "random" else POLICIES[name]()
