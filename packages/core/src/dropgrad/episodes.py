"""N-way K-shot Q-query episode sampling over any labelled index.

An *episode* (a few-shot task) picks ``n_way`` classes and, from each, ``n_shot`` support
items and ``n_query`` query items, all disjoint. The sampler only deals in item indices, so it
works over any data set whose items carry a hashable class label (image lists, tracking
sequences, viewpoint categories).

Episode ``i`` is a pure function of ``(seed, i)``: it does not depend on which episodes were
drawn before, in which process, or in which order. That is what lets a resumed run or a set of
data-loader workers reproduce exactly the episodes of an uninterrupted single-process run.
"""

import operator
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Episode", "EpisodeSampler"]

# How many offending classes the "too few items" error lists before summarising the rest.
_MAX_LISTED = 10


@dataclass(frozen=True, eq=False)
class Episode:
    """One sampled task: its classes and the item indices of its support and query sets.

    Attributes:
        classes: original class labels in episode order, of shape (n_way,).
        support: item indices into the labelled index, of shape (n_way * n_shot,), class-major:
            all shots of episode class 0, then those of class 1, and so on.
        query: item indices, of shape (n_way * n_query,), class-major like ``support``.

    >>> ep = Episode(np.array(["cat", "dog"]), np.array([4, 7, 1, 2]), np.array([5, 0]))
    >>> ep.n_way, ep.n_shot, ep.n_query
    (2, 2, 1)
    >>> ep.support_labels.tolist(), ep.query_labels.tolist()
    ([0, 0, 1, 1], [0, 1])
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray

    def __post_init__(self) -> None:
        # Read-only copies, so that "frozen" also holds for the arrays' contents.
        for name, dtype in (("classes", None), ("support", np.int64), ("query", np.int64)):
            arr = np.array(getattr(self, name), dtype=dtype)
            if arr.ndim != 1:
                raise ValueError(f"Episode: {name} must be one-dimensional, got shape {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        n_way = len(self.classes)
        if n_way == 0:
            raise ValueError("Episode: classes is empty; expected at least one class")
        for name in ("support", "query"):
            n = len(getattr(self, name))
            if n % n_way:
                raise ValueError(
                    f"Episode: {name} has {n} items, expected a multiple of n_way = {n_way}"
                )

    @property
    def n_way(self) -> int:
        """Number of classes in the episode."""
        return len(self.classes)

    @property
    def n_shot(self) -> int:
        """Support items per class."""
        return len(self.support) // self.n_way

    @property
    def n_query(self) -> int:
        """Query items per class."""
        return len(self.query) // self.n_way

    @property
    def support_labels(self) -> np.ndarray:
        """Episode-local labels 0..n_way-1 of ``support``, int64 of shape (n_way * n_shot,)."""
        return np.repeat(np.arange(self.n_way, dtype=np.int64), self.n_shot)

    @property
    def query_labels(self) -> np.ndarray:
        """Episode-local labels 0..n_way-1 of ``query``, int64 of shape (n_way * n_query,)."""
        return np.repeat(np.arange(self.n_way, dtype=np.int64), self.n_query)

    # The generated dataclass __eq__ would compare arrays with ``==`` and fail on truthiness.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Episode):
            return NotImplemented
        return (
            np.array_equal(self.classes, other.classes)
            and np.array_equal(self.support, other.support)
            and np.array_equal(self.query, other.query)
        )

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable, so no hashing


def _check_count(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int, or raise a ValueError naming the argument."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n}")
    return n


def _plain(label: Any) -> Any:
    """Unwrap numpy scalars so error messages show 3 or 'x', not np.int64(3)."""
    return label.item() if isinstance(label, np.generic) else label


def _label_array(labels: list[Hashable]) -> np.ndarray:
    """A 1-D array of class labels, typed when they share one type, object dtype otherwise."""
    if labels and len({type(x) for x in labels}) == 1:
        arr = np.array(labels)
        if arr.ndim == 1 and len(arr) == len(labels):
            return arr
    # Mixed types, or labels such as tuples that numpy would turn into extra dimensions.
    arr = np.empty(len(labels), dtype=object)
    arr[:] = labels
    return arr


def _group(labels: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return (class labels, item indices of each class); classes sorted where they can be.

    Sorting makes the episodes depend only on which items carry which label, not on the order
    in which classes first appear or on whether ``labels`` was a list or an array.
    """
    if hasattr(labels, "detach"):  # a torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "biuUS":
        classes, inverse = np.unique(labels, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(classes)))[:-1]
        return classes, [g.astype(np.int64) for g in np.split(order, bounds)]
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise ValueError(
            f"labels must be one-dimensional (one label per item), got shape {labels.shape}"
        )
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        try:
            groups.setdefault(label, []).append(i)
        except TypeError:
            raise ValueError(
                f"labels[{i}] = {label!r} is not hashable; expected one hashable class label "
                "per item"
            ) from None
    keys = list(groups)
    try:
        keys.sort()
    except TypeError:
        pass  # unorderable mixed labels: keep first-appearance order, still deterministic
    return _label_array(keys), [np.asarray(groups[k], dtype=np.int64) for k in keys]


class EpisodeSampler:
    """Sample N-way K-shot Q-query episodes, reproducibly, over a labelled index.

    Args:
        labels: one hashable class label per item, of shape (n_items,); a list, tuple, numpy
            array or CPU tensor. Item ``i`` of the data set has label ``labels[i]``.
        n_way: classes per episode (>= 1).
        n_shot: support items per class (>= 1).
        n_query: query items per class (>= 0).
        seed: non-negative integer; episode ``index`` is a pure function of ``(seed, index)``.
        groups: optional group label per item, of the shape of ``labels``; every item of a class
            must carry its class's group. An episode then never holds two classes of one group:
            it draws ``n_way`` distinct groups, then one class of each, uniformly. Omniglot's
            rotated copies of a character are one group, as in Finn et al.'s MAML code, which
            draws N characters per task and then one rotation for each. None: classes are drawn
            directly (the same episodes as before this argument existed).

    Raises:
        ValueError: at construction, if an argument is out of range, there are fewer classes
            (or groups) than ``n_way``, a class spans two groups, or some class has fewer than
            ``n_shot + n_query`` items (the message names up to 10 such classes and their
            counts).

    >>> sampler = EpisodeSampler(["a", "a", "a", "b", "b", "b", "c", "c", "c"], n_way=2,
    ...                          n_shot=1, n_query=2, seed=0)
    >>> sampler
    EpisodeSampler(n_way=2, n_shot=1, n_query=2, seed=0, n_classes=3, n_items=9)
    >>> ep = sampler.sample(7)
    >>> ep == sampler.sample(7), len(ep.support), len(ep.query)
    (True, 2, 4)
    >>> ep.query_labels.tolist()
    [0, 0, 1, 1]
    """

    def __init__(
        self,
        labels: Sequence[Hashable] | np.ndarray,
        n_way: int,
        n_shot: int,
        n_query: int,
        seed: int = 0,
        groups: Sequence[Hashable] | np.ndarray | None = None,
    ) -> None:
        self.n_way = _check_count("n_way", n_way, 1)
        self.n_shot = _check_count("n_shot", n_shot, 1)
        self.n_query = _check_count("n_query", n_query, 0)
        self.seed = _check_count("seed", seed, 0)
        self._classes, self._items = _group(labels)
        self._n_items = sum(len(g) for g in self._items)
        # Class positions of each group, or None to draw classes directly.
        self._group_members = None if groups is None else self._class_groups(groups)
        if self._group_members is not None and len(self._group_members) < self.n_way:
            raise ValueError(
                f"impossible {self.n_way}-way episodes: only {len(self._group_members)} groups"
                f" of classes (an episode takes at most one class of each group)"
            )

        if len(self._classes) < self.n_way:
            raise ValueError(
                f"impossible {self.n_way}-way episodes: only {len(self._classes)} classes"
                f" in {self._n_items} labelled items"
            )
        needed = self.n_shot + self.n_query
        short = [
            (_plain(c), len(g)) for c, g in zip(self._classes, self._items) if len(g) < needed
        ]
        if short:
            listed = "; ".join(
                f"class {c!r} has {n} items, needs n_shot + n_query = {needed}"
                for c, n in short[:_MAX_LISTED]
            )
            more = f" (and {len(short) - _MAX_LISTED} more)" if len(short) > _MAX_LISTED else ""
            raise ValueError(
                f"{len(short)} of {len(self._classes)} classes "
                f"{'has' if len(short) == 1 else 'have'} too few items for "
                f"{self.n_shot}-shot {self.n_query}-query episodes: {listed}{more}"
            )

    def _class_groups(self, groups: Any) -> list[np.ndarray]:
        """Positions (into ``self._classes``) of the classes of each group, groups sorted like classes."""
        if hasattr(groups, "detach"):
            groups = groups.detach().cpu().numpy()
        groups = list(groups)
        if len(groups) != self._n_items:
            raise ValueError(f"groups has {len(groups)} entries, expected one per item ({self._n_items})")
        of_class = []
        for c, items in zip(self._classes, self._items):
            try:
                found = {groups[int(i)] for i in items}
            except TypeError:
                raise ValueError(f"groups of class {_plain(c)!r} are not hashable; expected one hashable group label per item") from None
            if len(found) != 1:
                raise ValueError(
                    f"class {_plain(c)!r} spans groups {sorted(map(_plain, found), key=repr)}; "
                    "expected one group per class"
                )
            of_class.append(found.pop())
        return _group(of_class)[1]

    @property
    def n_classes(self) -> int:
        """Number of distinct classes in the index."""
        return len(self._classes)

    @property
    def n_items(self) -> int:
        """Number of labelled items in the index."""
        return self._n_items

    @property
    def classes(self) -> np.ndarray:
        """All class labels, sorted where orderable, of shape (n_classes,)."""
        return self._classes.copy()

    def sample(self, index: int) -> Episode:
        """Return episode number ``index`` (>= 0); the same episode every time.

        Classes are drawn without replacement (with ``groups``: groups without replacement,
        then one class of each), items of each class without replacement, and the first
        ``n_shot`` of each class's items form the support, so support and query are disjoint.

        >>> s = EpisodeSampler([0, 0, 1, 1, 2, 2], n_way=3, n_shot=1, n_query=1, seed=3)
        >>> sorted(s.sample(0).classes.tolist())
        [0, 1, 2]
        """
        index = _check_count("index", index, 0)
        # A fresh generator keyed on (seed, index): episode i never depends on episodes < i.
        rng = np.random.Generator(np.random.PCG64([self.seed, index]))
        if self._group_members is None:
            chosen = rng.choice(self.n_classes, size=self.n_way, replace=False)
        else:
            members = self._group_members
            picked = rng.choice(len(members), size=self.n_way, replace=False)
            chosen = np.array([members[g][rng.integers(len(members[g]))] for g in picked], dtype=np.int64)
        per_class = self.n_shot + self.n_query
        picks = np.empty((self.n_way, per_class), dtype=np.int64)
        for row, c in enumerate(chosen):
            items = self._items[c]
            picks[row] = items[rng.choice(len(items), size=per_class, replace=False)]
        return Episode(
            classes=self._classes[chosen],
            support=picks[:, : self.n_shot].reshape(-1),
            query=picks[:, self.n_shot :].reshape(-1),
        )

    def episodes(self, start: int = 0, count: int | None = None) -> Iterator[Episode]:
        """Yield episodes ``start, start + 1, ...``; ``count`` of them, or forever if None.

        >>> s = EpisodeSampler([0, 0, 1, 1], n_way=2, n_shot=1, n_query=1)
        >>> [len(ep.support) for ep in s.episodes(start=10, count=3)]
        [2, 2, 2]
        """
        start = _check_count("start", start, 0)
        if count is not None:
            count = _check_count("count", count, 0)
        i = start
        while count is None or i < start + count:
            yield self.sample(i)
            i += 1

    def __iter__(self) -> Iterator[Episode]:
        """Yield episodes 0, 1, 2, ... without end; slice with ``episodes(start, count)``."""
        return self.episodes()

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler(n_way={self.n_way}, n_shot={self.n_shot}, n_query={self.n_query},"
            f" seed={self.seed}, n_classes={self.n_classes}, n_items={self.n_items})"
        )
