"""CUDA: the MetaView inner loop and a tiny run place everything on the GPU (skips without CUDA)."""

import json

import pytest
import torch
from dropgrad import DropGrad, select_device
from dropgrad_viewpoint.cli import main_train
from dropgrad_viewpoint.methods.metaview import MetaView
from dropgrad_viewpoint.models import KeypointHead, build_trunk


@pytest.mark.gpu
def test_resnet18_metaview_step_on_cuda():
    device = select_device("cuda")
    model = MetaView(build_trunk("resnet18"), KeypointHead(256, 32), steps=2, dropgrad=DropGrad(0.1)).to(device)
    n, k = 4, 6
    batch = {"images": torch.randn(n, 3, 224, 224, device=device), "kp2d": torch.rand(n, k, 2, device=device) - 0.5,
             "visible": torch.ones(n, k, dtype=torch.bool, device=device), "depth": torch.zeros(n, k, device=device),
             "canon": torch.zeros(n, k, 3, device=device), "canon_valid": torch.ones(n, k, dtype=torch.bool, device=device)}
    model.task_loss(batch, batch).backward()
    assert model.head.heat[0].weight.grad.device.type == "cuda"


@pytest.mark.gpu
def test_tiny_run_on_cuda(small_synthetic, tmp_path):
    out = tmp_path / "run"
    assert main_train(["--dataset", "objectnet3d", "--data-root", str(small_synthetic), "--out", str(out), "--shots", "5",
                       "--query", "3", "--epochs", "1", "--steps-per-epoch", "3", "--val-categories", "1",
                       "--eval-draws", "1", "--device", "cuda", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["device"].startswith("cuda")
