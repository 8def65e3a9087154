"""Process-wide runtime helpers: seeding, device choice, bf16 autocast and RNG snapshots.

Everything here is about *where* and *how reproducibly* a run executes, never about what it
computes, so every app (and :mod:`dropgrad.training`) shares one implementation.

RNG snapshots are built only from types that ``torch.load(..., weights_only=True)`` accepts
(tensors, ints, floats, strings and lists/dicts of them), so they can live inside a checkpoint
that is loaded without unpickling arbitrary objects.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "autocast",
    "capture_rng_state",
    "restore_rng_state",
    "seed_everything",
    "select_device",
]

# Bumped if the layout of capture_rng_state() changes, so old snapshots fail loudly.
_RNG_STATE_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device).

    Args:
        seed: any non-negative integer; numpy only takes 32 bits, so it gets ``seed % 2**32``.

    >>> seed_everything(0); a = torch.rand(2)
    >>> seed_everything(0); torch.equal(a, torch.rand(2))
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got seed={seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    # torch.manual_seed also seeds every CUDA device (lazily, if CUDA is not initialised yet).
    torch.manual_seed(seed)


def _available_devices() -> str:
    if not torch.cuda.is_available():
        return "cpu only (no CUDA device visible to torch)"
    n = torch.cuda.device_count()
    return "cpu, " + ", ".join(f"cuda:{i}" for i in range(n))


def select_device(spec: str | None = "auto") -> torch.device:
    """Turn a ``--device`` value into a :class:`torch.device`.

    Args:
        spec: ``"auto"`` or ``None`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``
            or ``"cuda:N"``.

    Raises:
        ValueError: the spec is malformed, or names a CUDA device that does not exist; the
            message names the ``--device`` option and what is available.

    >>> select_device("cpu")
    device(type='cpu')
    >>> select_device("auto").type in ("cpu", "cuda")
    True
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N "
            f"(available: {_available_devices()})"
        ) from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(
            f"--device {spec!r} is not supported; use auto, cpu, cuda or cuda:N "
            f"(available: {_available_devices()})"
        )
    if not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec!r} asks for CUDA but torch sees none "
            f"(available: {_available_devices()}); use --device cpu or --device auto"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {spec!r} does not exist (available: {_available_devices()})"
        )
    return device


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """A bf16 :func:`torch.autocast` context on ``device``'s type when enabled, else a no-op.

    bf16 needs no loss scaling (same exponent range as fp32), which is why it is the only
    low-precision mode offered.

    Args:
        device: the device the computation runs on (only its type matters).
        enabled: ``False`` gives a null context, so callers need no branch.

    >>> x = torch.ones(2, 2)
    >>> with autocast("cpu", enabled=True):
    ...     (x @ x).dtype
    torch.bfloat16
    >>> with autocast("cpu", enabled=False):
    ...     (x @ x).dtype
    torch.float32
    """
    if not enabled:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def capture_rng_state() -> dict[str, Any]:
    """Snapshot python ``random``, numpy's global RNG and torch's CPU and CUDA RNGs.

    Returns:
        A dict of tensors, ints, floats and lists only (safe for ``weights_only`` loading):
        ``{"version", "python": {...}, "numpy": {...}, "torch_cpu": uint8 tensor,
        "torch_cuda": [uint8 tensor per CUDA device]}``.

    >>> state = capture_rng_state(); a = torch.rand(3)
    >>> restore_rng_state(state); torch.equal(a, torch.rand(3))
    True
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {
        "version": _RNG_STATE_VERSION,
        "python": {
            "version": int(version),
            "internal": [int(v) for v in internal],
            # None is not a number; an empty list means "no cached gaussian".
            "gauss_next": [] if gauss_next is None else [float(gauss_next)],
        },
        "numpy": {
            "name": str(name),
            # MT19937 keys are uint32; int64 holds them exactly and is a plain torch dtype.
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot from :func:`capture_rng_state` (e.g. after a checkpoint load).

    CUDA states are restored for the devices present in both the snapshot and this process;
    resuming on a machine with a different GPU count cannot be bit-exact anyway.

    Raises:
        ValueError: ``state`` is not a snapshot of the expected layout.

    >>> import random
    >>> state = capture_rng_state(); a = random.random()
    >>> restore_rng_state(state); a == random.random()
    True
    """
    if not isinstance(state, dict) or state.get("version") != _RNG_STATE_VERSION:
        raise ValueError(
            "RNG state is not a snapshot from dropgrad.runtime.capture_rng_state "
            f"(version {_RNG_STATE_VERSION} expected)"
        )
    try:
        py = state["python"]
        gauss = py["gauss_next"]
        random.setstate(
            (int(py["version"]), tuple(int(v) for v in py["internal"]), float(gauss[0]) if gauss else None)
        )
        npy = state["numpy"]
        keys = torch.as_tensor(npy["keys"]).numpy().astype(np.uint32)
        np.random.set_state(
            (str(npy["name"]), keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
        )
        torch.set_rng_state(torch.as_tensor(state["torch_cpu"], dtype=torch.uint8).cpu())
        cuda = list(state["torch_cuda"])
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"RNG state snapshot is incomplete or malformed ({exc!r})") from exc
    if cuda and torch.cuda.is_available():
        for index, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(s, dtype=torch.uint8).cpu(), device=index)
