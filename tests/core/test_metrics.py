import doctest
import json
import math

import numpy as np
import pytest
import torch

import dropgrad.metrics
from dropgrad.metrics import MeanCI, mean_ci95, summarize


def _naive(values):
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / n  # population variance, ddof=0
    return mean, 1.96 * math.sqrt(var) / math.sqrt(n)


def test_hand_computed_value():
    # mean 63; deviations -3,-1,1,3 -> variance 20/4 = 5; ci = 1.96 * sqrt(5) / 2
    mean, ci = mean_ci95([60.0, 62.0, 64.0, 66.0])
    assert mean == 63.0
    assert ci == pytest.approx(2.1913466179497944, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 17, 600])
def test_matches_naive_loop(n):
    values = np.random.default_rng(n).normal(60.0, 8.0, size=n).tolist()
    mean, ci = mean_ci95(values)
    ref_mean, ref_ci = _naive(values)
    assert mean == pytest.approx(ref_mean, rel=1e-12)
    assert ci == pytest.approx(ref_ci, rel=1e-10)


def test_uses_population_std():
    values = [1.0, 2.0, 4.0]
    _, ci = mean_ci95(values)
    assert ci == pytest.approx(1.96 * np.std(values, ddof=0) / math.sqrt(3))
    assert ci != pytest.approx(1.96 * np.std(values, ddof=1) / math.sqrt(3))


def test_accepts_list_array_tensor():
    values = [55.0, 61.5, 70.25, 48.0]
    expected = mean_ci95(values)
    assert mean_ci95(np.array(values, dtype=np.float32)) == pytest.approx(expected)
    t = torch.tensor(values, requires_grad=True)
    got = mean_ci95(t)
    assert got == pytest.approx(expected)
    assert all(type(x) is float for x in got)
    # A float64 tensor keeps its precision (values float32 would round).
    exact = [0.1, 0.2, 1 / 3, 2 / 3 + 1e-9]
    assert mean_ci95(torch.tensor(exact, dtype=torch.float64)) == mean_ci95(exact)


def test_single_value_has_zero_ci():
    assert mean_ci95([42.5]) == (42.5, 0.0)
    assert mean_ci95(np.array([1, 1, 1])) == (1.0, 0.0)


@pytest.mark.parametrize(
    "values, match",
    [
        ([], "empty"),
        (np.zeros((2, 3)), "one-dimensional"),
        ([1.0, float("nan")], r"values\[1\]"),
        (["a", "b"], "numbers"),
    ],
)
def test_bad_input(values, match):
    with pytest.raises(ValueError, match=match):
        mean_ci95(values)


def test_mean_ci_str_dict_and_summarize():
    m = summarize([60.0, 62.0, 64.0, 66.0])
    assert isinstance(m, MeanCI) and m.n == 4
    assert str(m) == "63.00 ± 2.19"
    assert str(MeanCI(63.1234, 0.8367, 600)) == "63.12 ± 0.84"
    d = m.as_dict()
    assert d == {"mean": 63.0, "ci95": pytest.approx(2.19134661), "n": 4}
    json.dumps(d)
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.tensor([]))


def test_docstring_examples():
    result = doctest.testmod(dropgrad.metrics, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
