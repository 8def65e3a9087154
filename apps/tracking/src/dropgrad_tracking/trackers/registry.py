"""The ``--tracker`` registry: a name, a factory and the options it understands.

A tracker module registers itself with :func:`register_tracker`; ``track-eval --tracker NAME``
builds it with :func:`make_tracker` from the command-line options. Options a tracker does not
use are refused, not ignored: ``--checkpoint`` given to the static baseline is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from .base import Tracker

__all__ = ["TrackerOptions", "TrackerSpec", "available_trackers", "make_tracker", "register_tracker", "tracker_spec"]


@dataclass(frozen=True)
class TrackerOptions:
    """What the command line can tell a tracker factory.

    Attributes:
        checkpoint: a meta-training run directory (or checkpoint file) to load.
        backbone_weights: a local backbone weight file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see ``dropgrad.select_device``).
        seed: seed for a tracker's own randomness (candidate sampling etc.).
    """

    checkpoint: Path | None = None
    backbone_weights: Path | None = None
    device: str = "auto"
    seed: int = 0


_OPTIONAL = ("checkpoint", "backbone_weights")


@dataclass(frozen=True)
class TrackerSpec:
    """A registered tracker: ``factory(options) -> Tracker``; ``accepts`` lists the optional
    :class:`TrackerOptions` fields (``checkpoint``, ``backbone_weights``) it uses."""

    name: str
    factory: Callable[[TrackerOptions], Tracker]
    help: str
    accepts: frozenset[str] = field(default_factory=frozenset)


_REGISTRY: dict[str, TrackerSpec] = {}


def register_tracker(
    name: str, factory: Callable[[TrackerOptions], Tracker], help: str, accepts: Iterable[str] = ()
) -> TrackerSpec:
    """Add a tracker under ``name`` (lower case); registering a name twice is an error."""
    key = name.lower()
    accepted = frozenset(accepts)
    unknown = accepted - set(_OPTIONAL)
    if unknown:
        raise ValueError(f"register_tracker({name!r}): unknown options {sorted(unknown)}; choose from {_OPTIONAL}")
    if key in _REGISTRY:
        raise ValueError(f"a tracker named {key!r} is already registered")
    spec = TrackerSpec(key, factory, help, accepted)
    _REGISTRY[key] = spec
    return spec


def available_trackers() -> list[str]:
    """Registered tracker names, sorted."""
    return sorted(_REGISTRY)


def tracker_spec(name: str) -> TrackerSpec:
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"--tracker {name!r} is not a known tracker; choose from {', '.join(available_trackers())}")
    return _REGISTRY[key]


def make_tracker(name: str, options: TrackerOptions | None = None) -> Tracker:
    """Build the tracker registered as ``name``.

    Raises:
        ValueError: unknown name (lists the known ones), or an option the tracker does not use.

    >>> make_tracker("static").name
    'static'
    """
    spec = tracker_spec(name)
    opts = options or TrackerOptions()
    for f in fields(opts):
        if f.name in _OPTIONAL and getattr(opts, f.name) is not None and f.name not in spec.accepts:
            raise ValueError(f"--{f.name.replace('_', '-')} is not used by --tracker {spec.name}; leave it out")
    return spec.factory(opts)
