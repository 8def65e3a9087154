"""Helpers shared by the core tests: a tiny conv net, a stack of random few-shot tasks, and the
graphs inductor lowers."""

import contextlib

import torch
from dropgrad import Task
from torch import nn


def tiny_net(way: int = 3, running_stats: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=running_stats), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, way),
    )


def make_tasks(seed: int, device, dtype=torch.float64, T: int = 2, way: int = 3, shot: int = 2, query: int = 2) -> Task:
    g = torch.Generator().manual_seed(seed)
    return Task(
        torch.randn(T, way * shot, 3, 8, 8, generator=g, dtype=dtype),
        torch.arange(way).repeat_interleave(shot).repeat(T, 1),
        torch.randn(T, way * query, 3, 8, 8, generator=g, dtype=dtype),
        torch.arange(way).repeat_interleave(query).repeat(T, 1),
    ).to(device)


@contextlib.contextmanager
def lowered_graphs():
    """Within the block, inductor compiles afresh (no on-disk cache entry answers: the caches key
    a graph before its decompositions) and the list yielded collects, as text, each post-grad
    graph it lowers (forward, backward): the operators after decompositions, whatever code the
    machine's thread count then makes of them."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config
    from torch._inductor.custom_graph_pass import CustomGraphPass

    graphs: list[str] = []

    class Spy(CustomGraphPass):
        def __call__(self, graph):
            graphs.append(str(graph))

        def uuid(self):
            return None

    with config.patch(post_grad_custom_pre_pass=Spy(), fx_graph_cache=False), \
            functorch_config.patch(enable_autograd_cache=False):
        yield graphs
