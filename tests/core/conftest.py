"""Helpers shared by the core tests: a tiny conv net and a stack of random few-shot tasks."""

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
