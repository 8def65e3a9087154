import doctest
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dropgrad.episodes
from dropgrad.episodes import Episode, EpisodeSampler


def _labels(n_classes: int = 10, per_class: int = 8, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(n_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def _check_episode(ep: Episode, labels: np.ndarray, n_way: int, n_shot: int, n_query: int):
    assert ep.classes.shape == (n_way,)
    assert ep.support.shape == (n_way * n_shot,)
    assert ep.query.shape == (n_way * n_query,)
    assert len(set(ep.classes.tolist())) == n_way
    # Disjoint support and query, and no item twice.
    all_items = np.concatenate([ep.support, ep.query])
    assert len(np.unique(all_items)) == len(all_items)
    # Class-major layout: row r of the support holds n_shot items of classes[r].
    sup = labels[ep.support].reshape(n_way, n_shot)
    qry = labels[ep.query].reshape(n_way, n_query)
    for r, c in enumerate(ep.classes):
        assert (sup[r] == c).all()
        assert (qry[r] == c).all()
    assert ep.support_labels.dtype == np.int64 and ep.query_labels.dtype == np.int64
    np.testing.assert_array_equal(ep.support_labels, np.repeat(np.arange(n_way), n_shot))
    np.testing.assert_array_equal(ep.query_labels, np.repeat(np.arange(n_way), n_query))
    # Local labels index the episode's classes.
    np.testing.assert_array_equal(ep.classes[ep.support_labels], labels[ep.support])


def test_same_seed_and_index_give_identical_episode():
    labels = _labels()
    a = EpisodeSampler(labels, n_way=5, n_shot=2, n_query=3, seed=11)
    b = EpisodeSampler(labels, n_way=5, n_shot=2, n_query=3, seed=11)
    assert a.sample(4) == b.sample(4)
    assert a.sample(4) == a.sample(4)


def test_episode_does_not_depend_on_what_was_sampled_before():
    labels = _labels()
    a = EpisodeSampler(labels, 5, 1, 5, seed=2)
    b = EpisodeSampler(labels, 5, 1, 5, seed=2)
    for i in range(20):
        a.sample(i)
    assert a.sample(37) == b.sample(37)


def test_different_index_or_seed_gives_different_episodes():
    labels = _labels()
    s = EpisodeSampler(labels, 5, 1, 5, seed=0)
    eps = [s.sample(i) for i in range(10)]
    assert all(x != y for x, y in itertools.combinations(eps, 2))
    assert s.sample(0) != EpisodeSampler(labels, 5, 1, 5, seed=1).sample(0)


def test_neighbouring_seeds_are_unrelated_streams():
    # Apps give their train/val/test samplers nearby seeds: seed s + 1's episode i must not be
    # seed s's episode i + 1 (as keying one generator on seed + index would make it).
    labels = _labels(n_classes=20, per_class=10)
    for seed in (0, 1, 7):
        a = EpisodeSampler(labels, 5, 1, 5, seed=seed)
        b = EpisodeSampler(labels, 5, 1, 5, seed=seed + 1)
        for i in range(5):
            assert a.sample(i + 1) != b.sample(i), (seed, i)


def test_layout_disjointness_and_local_labels():
    labels = _labels(n_classes=12, per_class=20)
    s = EpisodeSampler(labels, n_way=5, n_shot=5, n_query=15)
    for i in range(30):
        _check_episode(s.sample(i), labels, 5, 5, 15)


def test_n_query_zero_gives_empty_query():
    s = EpisodeSampler(_labels(), 3, 2, 0)
    ep = s.sample(0)
    assert ep.query.shape == (0,) and ep.query_labels.shape == (0,)


def test_too_few_items_error_names_the_class():
    labels = ["a"] * 10 + ["x"] * 3 + ["b"] * 10
    with pytest.raises(ValueError) as err:
        EpisodeSampler(labels, n_way=2, n_shot=5, n_query=1)
    msg = str(err.value)
    assert "class 'x' has 3 items, needs n_shot + n_query = 6" in msg
    assert "'a'" not in msg and "'b'" not in msg


def test_too_few_items_error_lists_at_most_ten_classes():
    labels = np.repeat(np.arange(15), 2)
    with pytest.raises(ValueError, match=r"15 of 15 classes.*\(and 5 more\)") as err:
        EpisodeSampler(labels, n_way=2, n_shot=2, n_query=1)
    assert str(err.value).count("has 2 items") == 10
    assert "np.int64" not in str(err.value)


def test_impossible_n_way():
    with pytest.raises(ValueError, match="impossible 20-way episodes: only 5 classes"):
        EpisodeSampler(_labels(n_classes=5), n_way=20, n_shot=1, n_query=1)
    with pytest.raises(ValueError, match="impossible 1-way episodes: only 0 classes"):
        EpisodeSampler([], n_way=1, n_shot=1, n_query=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_way": 0}, "n_way"),
        ({"n_shot": 0}, "n_shot"),
        ({"n_query": -1}, "n_query"),
        ({"n_way": 2.5}, "n_way"),
        ({"n_shot": True}, "n_shot"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them(kwargs, name):
    args = {"n_way": 2, "n_shot": 1, "n_query": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=name):
        EpisodeSampler(_labels(), **args)


def test_negative_index_is_an_error():
    with pytest.raises(ValueError, match="index"):
        EpisodeSampler(_labels(), 2, 1, 1).sample(-1)


def test_string_labels_and_container_independence():
    names = np.array(["cat", "dog", "emu", "fox", "gnu"])
    int_labels = _labels(n_classes=5, per_class=6)
    str_labels = names[int_labels]
    s_list = EpisodeSampler(str_labels.tolist(), 3, 2, 2, seed=5)
    s_arr = EpisodeSampler(str_labels, 3, 2, 2, seed=5)
    s_int = EpisodeSampler(int_labels, 3, 2, 2, seed=5)
    s_tensor = EpisodeSampler(torch.as_tensor(int_labels), 3, 2, 2, seed=5)
    for i in range(5):
        ep = s_list.sample(i)
        _check_episode(ep, str_labels, 3, 2, 2)
        assert ep.classes.dtype.kind == "U"
        assert ep == s_arr.sample(i)
        # Same classes in sorted order, so the same item indices whatever the label type.
        np.testing.assert_array_equal(ep.support, s_int.sample(i).support)
        assert s_int.sample(i) == s_tensor.sample(i)


def test_mixed_and_tuple_labels():
    labels = [("a", 1)] * 3 + [("b", 2)] * 3 + [7] * 3
    s = EpisodeSampler(labels, 3, 1, 2)
    ep = s.sample(0)
    assert ep.classes.dtype == object and s.n_classes == 3
    for r, c in enumerate(ep.classes):
        assert labels[ep.support[r]] == c
        assert all(labels[i] == c for i in ep.query[2 * r : 2 * r + 2])


def test_episodes_iter_and_repr():
    s = EpisodeSampler(_labels(), 4, 1, 2, seed=9)
    assert list(s.episodes(3, 4)) == [s.sample(i) for i in range(3, 7)]
    assert list(itertools.islice(iter(s), 3)) == [s.sample(i) for i in range(3)]
    assert list(s.episodes(0, 0)) == []
    assert s.n_classes == 10 and s.n_items == 80
    assert repr(s) == (
        "EpisodeSampler(n_way=4, n_shot=1, n_query=2, seed=9, n_classes=10, n_items=80)"
    )


def test_episode_is_read_only_and_validated():
    ep = EpisodeSampler(_labels(), 2, 1, 1).sample(0)
    with pytest.raises(ValueError):
        ep.support[0] = 3
    with pytest.raises(ValueError, match="multiple of n_way"):
        Episode(np.array([0, 1]), np.array([1, 2, 3]), np.array([4, 5]))


@st.composite
def _problems(draw):
    counts = draw(st.lists(st.integers(1, 9), min_size=1, max_size=8))
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.array(draw(st.permutations(labels.tolist())), dtype=np.int64)
    if draw(st.booleans()):
        labels = labels * 7 - 3  # arbitrary, negative, non-contiguous labels
    n_way = draw(st.integers(1, 5))
    n_shot = draw(st.integers(1, 4))
    n_query = draw(st.integers(0, 4))
    return labels, n_way, n_shot, n_query


@settings(max_examples=60, deadline=None)
@given(_problems(), st.integers(0, 2**32), st.integers(0, 2**40))
def test_property_random_label_arrays(problem, seed, index):
    labels, n_way, n_shot, n_query = problem
    _, counts = np.unique(labels, return_counts=True)
    feasible = len(counts) >= n_way and counts.min() >= n_shot + n_query
    if not feasible:
        with pytest.raises(ValueError):
            EpisodeSampler(labels, n_way, n_shot, n_query, seed=seed)
        return
    s = EpisodeSampler(labels, n_way, n_shot, n_query, seed=seed)
    ep = s.sample(index)
    _check_episode(ep, labels, n_way, n_shot, n_query)
    assert ep == EpisodeSampler(labels.tolist(), n_way, n_shot, n_query, seed=seed).sample(index)


def test_docstring_examples():
    result = doctest.testmod(dropgrad.episodes, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _rotated_labels(n_chars: int = 12, per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Omniglot-like: class 4k + r is character k rotated r quarter turns; group = character."""
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(4 * n_chars), per_class))
    return labels, labels // 4


def test_groups_none_keeps_the_class_draw_of_saved_runs():
    """The draw without groups is pinned: a saved run's episodes must not change under it."""
    labels = _labels(n_classes=9, per_class=5)
    sampler = EpisodeSampler(labels, n_way=4, n_shot=2, n_query=1, seed=7, groups=None)
    for index in (0, 3, 11):
        rng = np.random.Generator(np.random.PCG64([7, index]))
        classes = rng.choice(9, size=4, replace=False)
        items = [np.flatnonzero(labels == c)[rng.choice(5, size=3, replace=False)] for c in classes]
        ep = sampler.sample(index)
        np.testing.assert_array_equal(ep.classes, classes)
        np.testing.assert_array_equal(ep.support, np.stack(items)[:, :2].reshape(-1))
        np.testing.assert_array_equal(ep.query, np.stack(items)[:, 2:].reshape(-1))


def test_groups_never_share_an_episode_and_every_class_is_drawn_evenly():
    labels, groups = _rotated_labels()
    sampler = EpisodeSampler(labels, n_way=12, n_shot=1, n_query=2, seed=3, groups=groups)
    counts = np.zeros(48)
    for index in range(1500):
        ep = sampler.sample(index)
        _check_episode(ep, labels, 12, 1, 2)
        assert len(set((ep.classes // 4).tolist())) == 12  # one rotation per character
        counts[ep.classes] += 1
        assert ep == sampler.sample(index)
    # Each of 4 rotations of each character is drawn with probability 1/4 per episode: 375 expected;
    # the binomial std is about 17, so 6 std either side.
    assert counts.min() > 270 and counts.max() < 480
    # Without groups, 12 of 48 classes often repeat a character (the case the groups rule out).
    plain = EpisodeSampler(labels, n_way=12, n_shot=1, n_query=2, seed=3)
    assert any(len(set((plain.sample(i).classes // 4).tolist())) < 12 for i in range(20))


def test_groups_errors_name_what_is_wrong():
    labels, groups = _rotated_labels(n_chars=3)
    with pytest.raises(ValueError, match="impossible 4-way episodes: only 3 groups"):
        EpisodeSampler(labels, n_way=4, n_shot=1, n_query=1, groups=groups)
    bad = groups.copy()
    bad[np.flatnonzero(labels == 5)[0]] = 2
    with pytest.raises(ValueError, match="class 5 spans groups \\[1, 2\\]"):
        EpisodeSampler(labels, n_way=2, n_shot=1, n_query=1, groups=bad)
    with pytest.raises(ValueError, match="groups has 3 entries, expected one per item \\(48\\)"):
        EpisodeSampler(labels, n_way=2, n_shot=1, n_query=1, groups=[0, 1, 2])
    with pytest.raises(ValueError, match="not hashable"):
        EpisodeSampler(labels, n_way=2, n_shot=1, n_query=1, groups=[[0]] * len(labels))
    # A tensor of groups works like the array.
    a = EpisodeSampler(labels, n_way=3, n_shot=1, n_query=1, groups=torch.from_numpy(groups)).sample(2)
    assert a == EpisodeSampler(labels, n_way=3, n_shot=1, n_query=1, groups=groups).sample(2)


def test_groups_draw_is_pinned_groups_in_drawn_order_then_one_class_each():
    """The grouped draw, by hand: groups in the order drawn (not sorted: an episode's class order
    is its label order), then a uniform class of each, then the items as without groups."""
    labels, groups = _rotated_labels(n_chars=6, per_class=3)
    sampler = EpisodeSampler(labels, n_way=4, n_shot=1, n_query=2, seed=5, groups=groups)
    for index in range(12):
        rng = np.random.Generator(np.random.PCG64([5, index]))
        picked = rng.choice(6, size=4, replace=False)
        classes = np.array([4 * g + rng.integers(4) for g in picked])
        items = [np.flatnonzero(labels == c)[rng.choice(3, size=3, replace=False)] for c in classes]
        ep = sampler.sample(index)
        np.testing.assert_array_equal(ep.classes, classes)
        np.testing.assert_array_equal(ep.support, np.stack(items)[:, :1].reshape(-1))
        np.testing.assert_array_equal(ep.query, np.stack(items)[:, 1:].reshape(-1))
