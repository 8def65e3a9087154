"""DropGrad: multiplicative noise on inner-loop gradients (Tseng et al.).

In the inner loop of gradient-based meta-learning each gradient element is multiplied by
noise ``n`` before the update, only while meta-training:

* binary:   ``n ~ Bernoulli(1 - p) / (1 - p)``   (0 with probability p, else 1/(1-p))
* gaussian: ``n ~ Normal(1, p / (1 - p))``        (std ``sqrt(p / (1 - p))``)

Both have ``E[n] = 1`` and ``Var[n] = p / (1 - p)``. ``p = 0`` is exactly the identity.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

Kind = Literal["binary", "gaussian", "none"]
Schedule = Literal["constant", "linear"]
KINDS: tuple[str, ...] = ("binary", "gaussian", "none")
SCHEDULES: tuple[str, ...] = ("constant", "linear")

#: The paper's ResNet-18 ablation groups (Conv, Block1-4, FC) in torchvision's parameter
#: naming. Apps whose models name parameters differently pass their own ``groups``.
RESNET_GROUPS: dict[str, tuple[str, ...]] = {
    "conv": ("conv1.*", "bn1.*"),
    "block1": ("layer1.*",),
    "block2": ("layer2.*",),
    "block3": ("layer3.*",),
    "block4": ("layer4.*",),
    "fc": ("fc.*",),
}

Grads = TypeVar("Grads", Sequence[Tensor], Mapping[str, Tensor])

# Low-precision noise would quantise 1 + eps badly; draw in float32 and cast.
_DRAW_DTYPE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _is_dense(t: Tensor) -> bool:
    """Whether ``t``'s strides lay its elements out densely, in some dimension order (e.g. channels_last)."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _shaped_like(chunk: Tensor, t: Tensor) -> Tensor:
    """A flat noise chunk viewed with ``t``'s shape and, where dense, its strides.

    Matching the layout of a channels_last gradient keeps the noisy update one vectorised pass;
    a contiguous noise tensor against NHWC gradients made it a strided one (DropGrad overhead
    +3.3% instead of +0.6% on ResNet-18 with channels_last, H200).
    """
    if t.is_contiguous() or not _is_dense(t):
        return chunk.view(t.shape)
    return chunk.as_strided(t.shape, t.stride())


def check_p(p: float, option: str = "p") -> float:
    """Return ``p`` as a float after checking ``0 <= p < 1``.

    >>> check_p(0.2)
    0.2
    >>> check_p(1.0)
    Traceback (most recent call last):
    ...
    ValueError: DropGrad: p must satisfy 0 <= p < 1, got p=1.0
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
        raise ValueError(f"DropGrad: {option} must be a number with 0 <= {option} < 1, got {option}={p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"DropGrad: {option} must satisfy 0 <= {option} < 1, got {option}={p!r}")
    return float(p)


def check_schedule(schedule: str, epochs: int, schedule_option: str = "schedule", epochs_option: str = "epochs") -> None:
    """Refuse a ``linear`` schedule over fewer than 2 epochs, which would never apply DropGrad.

    The ramp is 0 at the first epoch and full at the last; with one epoch, the only epoch is
    the first, so a run asked for DropGrad would silently train without it.

    >>> check_schedule("linear", 1)
    Traceback (most recent call last):
    ...
    ValueError: DropGrad: schedule linear needs epochs >= 2 (the strength is 0 at the first epoch and full at the last), got epochs=1
    """
    if schedule == "linear" and epochs < 2:
        raise ValueError(
            f"DropGrad: {schedule_option} linear needs {epochs_option} >= 2 (the strength is 0 at the first "
            f"epoch and full at the last), got {epochs_option}={epochs}"
        )


def parse_selection(params: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Normalise a parameter selection: ``None`` (all), ``"block4,fc"`` or ``["layer4.*", "fc.*"]``.

    >>> parse_selection("block4, fc")
    ('block4', 'fc')
    >>> parse_selection(None) is None
    True
    """
    if params is None:
        return None
    if isinstance(params, str):
        entries = tuple(s.strip() for s in params.split(",") if s.strip())
    else:
        items = list(params)
        if not all(isinstance(s, str) and s.strip() for s in items):
            entries = ()
        else:
            entries = tuple(s.strip() for s in items)
    if not entries:
        raise ValueError(
            f"DropGrad: params must be parameter-name patterns or group names, got params={params!r}"
        )
    return entries


def _parse_groups(groups: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Group name (lower case) -> its name patterns; a lone string is one pattern.

    A plain string must not be taken as a sequence: ``"fc.*"`` would become the patterns
    ``f``, ``c``, ``.`` and ``*``, and ``*`` selects every parameter.
    """
    parsed: dict[str, tuple[str, ...]] = {}
    for name, patterns in groups.items():
        entries = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        if not isinstance(name, str) or not entries or not all(isinstance(e, str) and e.strip() for e in entries):
            raise ValueError(
                f"DropGrad: groups must map a name to parameter-name patterns, got {name!r}: {patterns!r}"
            )
        parsed[name.lower()] = tuple(e.strip() for e in entries)
    return parsed


class DropGrad(nn.Module):
    """Gradient dropout: ``g -> g * n`` on every selected gradient tensor, in one fused draw.

    Args:
        p: drop rate, ``0 <= p < 1``; the noise variance is ``p / (1 - p)``.
        kind: ``"gaussian"`` (paper default), ``"binary"`` or ``"none"``.
        schedule: ``"constant"``, or ``"linear"``: strength ramps from 0 to full as
            :meth:`set_progress` goes from 0 to 1 (binary: p ramps; gaussian: the std ramps).
        params: which tensors get noise, by name: ``None`` (all, the paper's "full"), or
            group names (keys of ``groups``, case-insensitive) and/or ``fnmatch`` patterns
            such as ``"layer4.*"``; a comma-separated string is accepted.
        generator: optional ``torch.Generator`` for reproducible noise (else torch's global RNG).
        groups: named groups of patterns; defaults to :data:`RESNET_GROUPS`.

    Calling it on a sequence of gradient tensors, or a name -> tensor mapping, returns the same
    structure with noise applied. It is the identity in eval mode, for kind ``"none"``, for
    ``p == 0`` and at progress 0 of a linear schedule. Tensors may carry a leading task
    dimension (a batch of tasks adapted together): every element still gets its own draw.

    >>> dg = DropGrad(p=0.5, kind="binary", generator=torch.Generator().manual_seed(0))
    >>> out = dg([torch.ones(6)])
    >>> sorted(set(out[0].tolist())) # values are 0 or 1/(1-p)
    [0.0, 2.0]
    >>> _ = dg.eval(); dg([torch.ones(2)])[0]
    tensor([1., 1.])
    """

    def __init__(
        self,
        p: float = 0.1,
        kind: Kind = "gaussian",
        schedule: Schedule = "constant",
        params: str | Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"DropGrad: kind must be one of {', '.join(KINDS)}, got kind={kind!r}")
        if schedule not in SCHEDULES:
            raise ValueError(
                f"DropGrad: schedule must be one of {', '.join(SCHEDULES)}, got schedule={schedule!r}"
            )
        self.kind: str = kind
        self.schedule: str = schedule
        self.selection = parse_selection(params)
        self.groups = _parse_groups(RESNET_GROUPS if groups is None else groups)
        self.generator = generator
        # Under the linear schedule the strength is also kept in a tensor per (device, dtype) that
        # every draw reads, so a CUDA graph recorded once follows the ramp (see _strength).
        self._strength_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._progress = 1.0 if schedule == "constant" else 0.0
        self.p = check_p(p)
        self._selected_cache: dict[tuple[str, ...], tuple[bool, ...]] = {}

    # ----------------------------------------------------------------- strength
    def set_progress(self, fraction: float) -> None:
        """Set training progress in [0, 1] (used by the ``linear`` schedule)."""
        if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"DropGrad.set_progress: fraction must be in [0, 1], got {fraction!r}")
        self.progress = float(fraction)

    @property
    def progress(self) -> float:
        """Training progress in [0, 1]; the ``linear`` schedule scales the strength by it."""
        return self._progress

    @progress.setter
    def progress(self, fraction: float) -> None:
        self._progress = float(fraction)
        self._refresh_strength()

    @property
    def p(self) -> float:
        """The drop rate at full strength."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_p(value)
        self._refresh_strength()

    def _refresh_strength(self) -> None:
        # The tensors the linear schedule's draws (and graphs recorded from them) read.
        for strength in self._strength_cache.values():
            strength.fill_(self._linear_strength())

    def _linear_strength(self) -> float:
        """What a linear-schedule draw reads from its tensor: keep probability (binary) or std (gaussian)."""
        return 1.0 - self.effective_p if self.kind == "binary" else self.std

    def _strength(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The linear schedule's strength as a 0-d tensor on ``device``, the same tensor on every call.

        A CUDA graph records the tensor's address, not its value, and :attr:`progress` updates it in
        place: one graph recorded at any progress > 0 draws at the strength of the moment at
        every replay. (Read as a Python float, the strength would have to be part of the graph's
        key, and every epoch of a ramp would record a new graph.)
        """
        key = (device, dtype)
        strength = self._strength_cache.get(key)
        if strength is None:
            strength = torch.full((), self._linear_strength(), device=device, dtype=dtype)
            self._strength_cache[key] = strength
        return strength

    def graph_key(self) -> tuple[Any, ...]:
        """What a recorded draw depends on that is read in Python when it is recorded.

        A CUDA graph of a step that draws (:class:`dropgrad.CapturedMetaStep`) holds it in its key.
        The linear schedule's strength is read from a tensor at every replay (:meth:`_strength`),
        so its key holds the kind and ``p`` but not the progress.
        """
        if not self.active:
            return (False,)
        if self.schedule == "linear":
            return (True, self.kind, self.p, "linear")
        return (True, self.kind, self.p, self.std)

    @property
    def effective_p(self) -> float:
        """The drop rate in force now: ``p * progress`` for binary noise under the linear schedule.

        (Gaussian noise keeps ``p``; its linear schedule ramps :attr:`std` instead.)
        """
        if self.kind == "binary" and self.schedule == "linear":
            return self.p * self.progress
        return self.p

    @property
    def std(self) -> float:
        """The noise standard deviation in force now (gaussian: ``sqrt(p/(1-p)) * progress``)."""
        if self.kind == "binary":
            q = self.effective_p
            return math.sqrt(q / (1.0 - q))
        full = math.sqrt(self.p / (1.0 - self.p))
        return full * self.progress if self.schedule == "linear" else full

    @property
    def active(self) -> bool:
        """Whether a call changes anything (training mode, a real kind, non-zero strength)."""
        return self.training and self.kind != "none" and self.std > 0.0

    # ---------------------------------------------------------------- selection
    def _patterns(self, entry: str) -> tuple[str, ...]:
        return self.groups.get(entry.lower(), (entry,))

    def selected(self, names: Sequence[str]) -> tuple[bool, ...]:
        """Which of ``names`` receive noise. Every selection entry must match some name."""
        key = tuple(names)
        hit = self._selected_cache.get(key)
        if hit is not None:
            return hit
        if self.selection is None:
            hit = (True,) * len(key)
        else:
            flags = [False] * len(key)
            for entry in self.selection:
                matched = False
                for pattern in self._patterns(entry):
                    for i, name in enumerate(key):
                        if fnmatch.fnmatchcase(name, pattern):
                            flags[i] = matched = True
                if not matched:
                    sample = ", ".join(key[:8]) + (", ..." if len(key) > 8 else "")
                    # A group name stands for its patterns: say which, or "block1" failing
                    # next to a parameter named "block1.conv.weight" reads as a bug.
                    what = (f"group {entry!r} (patterns {', '.join(self._patterns(entry))})"
                            if entry.lower() in self.groups else f"params entry {entry!r}")
                    raise ValueError(
                        f"DropGrad: {what} matches no parameter "
                        f"(groups: {', '.join(self.groups)}; names: {sample})"
                    )
            hit = tuple(flags)
        self._selected_cache[key] = hit
        return hit

    # -------------------------------------------------------------------- noise
    def _draw(self, numel: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """One flat noise vector of ``numel`` elements (the fused draw)."""
        if self.kind not in ("binary", "gaussian"):
            # A kind added to KINDS without a draw here must not fall through to Gaussian noise.
            raise NotImplementedError(f"DropGrad: kind {self.kind!r} has no noise draw; add one to DropGrad._draw")
        gen = self.generator
        draw_device = gen.device if gen is not None else device
        draw_dtype = _DRAW_DTYPE.get(dtype, dtype)
        n = torch.empty(numel, device=draw_device, dtype=draw_dtype)
        if self.schedule == "linear":
            strength = self._strength(draw_device, draw_dtype)
            if self.kind == "binary":
                n.bernoulli_(strength.expand(numel), generator=gen).div_(strength)
            else:
                # 1 + std * z in one out-of-place pass (in place, mul_ then add_ would be two).
                z = n.normal_(0.0, 1.0, generator=gen)
                n = torch.addcmul(z.new_ones(()), z, strength)
        elif self.kind == "binary":
            keep = 1.0 - self.effective_p
            n.bernoulli_(keep, generator=gen).mul_(1.0 / keep)
        else:
            # normal_(mean, std) is one kernel; randn then mul_ then add_ would be three passes.
            n.normal_(1.0, self.std, generator=gen)
        return n.to(device=device, dtype=dtype)

    def noise_like(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Noise tensors shaped like ``tensors``: one draw per (device, dtype) group, split into views."""
        out: list[Tensor | None] = [None] * len(tensors)
        by_group: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, t in enumerate(tensors):
            by_group.setdefault((t.device, t.dtype), []).append(i)
        for (device, dtype), idx in by_group.items():
            sizes = [tensors[i].numel() for i in idx]
            flat = self._draw(sum(sizes), device, dtype)
            for i, chunk in zip(idx, flat.split(sizes)):
                out[i] = _shaped_like(chunk, tensors[i])
        return out  # type: ignore[return-value]

    def draw(self, grads: Grads, names: Sequence[str] | None = None) -> list[Tensor | None]:
        """The noise :meth:`forward` would multiply each tensor by, without applying it.

        One fused draw, as in :meth:`forward` (same random stream). ``None`` marks a tensor that
        is left unchanged (not selected, or the operator is inactive). Drawing ahead of time lets
        a recomputed (activation-checkpointed) inner step reuse exactly the same noise.

        >>> dg = DropGrad(0.5, "binary", params="fc.*", generator=torch.Generator().manual_seed(0))
        >>> [n is None for n in dg.draw({"conv.w": torch.ones(2), "fc.w": torch.ones(3)})]
        [True, False]
        """
        values = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
        # The selection is checked even while inactive (p = 0, eval, progress 0 of a linear
        # schedule), so that a pattern matching nothing fails at once, not an epoch later.
        if self.selection is not None:
            names = list(grads.keys()) if isinstance(grads, Mapping) else names
            if names is None:
                raise ValueError(
                    "DropGrad: params selects tensors by name; pass a name -> tensor mapping or names="
                )
            if len(names) != len(values):
                raise ValueError(f"DropGrad: got {len(values)} tensors but {len(names)} names")
            flags = self.selected(names)
        else:
            flags = (True,) * len(values)
        if not self.active:
            return [None] * len(values)
        chosen = [v for v, f in zip(values, flags) if f]
        noise = iter(self.noise_like(chosen) if chosen else [])
        return [next(noise) if f else None for f in flags]

    @staticmethod
    def apply(grads: Grads, noise: Sequence[Tensor | None]) -> Grads:
        """``g * n`` for every tensor whose noise (from :meth:`draw`) is not ``None``; one ``_foreach_mul``."""
        keys = list(grads.keys()) if isinstance(grads, Mapping) else None
        values = list(grads.values()) if keys is not None else list(grads)  # type: ignore[union-attr]
        idx = [i for i, n in enumerate(noise) if n is not None]
        if idx:
            noisy = torch._foreach_mul([values[i] for i in idx], [noise[i] for i in idx])  # type: ignore[misc]
            for i, v in zip(idx, noisy):
                values[i] = v
        if keys is not None:
            return dict(zip(keys, values))  # type: ignore[return-value]
        return type(grads)(values) if isinstance(grads, tuple) else values  # type: ignore[return-value]

    def forward(self, grads: Grads, names: Sequence[str] | None = None) -> Grads:
        """Apply DropGrad.

        Args:
            grads: gradient tensors, a sequence or a name -> tensor mapping; any shapes, e.g.
                of shape ``param.shape`` or ``(n_tasks, *param.shape)``.
            names: parameter names for a sequence input (needed only with a ``params`` selection).

        Returns:
            The same structure (list/tuple/dict) with ``g * n`` on the selected tensors and the
            other tensors passed through unchanged.
        """
        if not self.active:
            if self.selection is not None:
                self.draw(grads, names)  # checks the selection (see draw); draws nothing while inactive
            return grads
        return self.apply(grads, self.draw(grads, names))

    # -------------------------------------------------------------------- state
    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"progress": self.progress}
        if self.generator is not None:
            state["generator_state"] = self.generator.get_state()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.progress = float(state["progress"])  # also updates the linear schedule's strength tensors
        if self.generator is not None and "generator_state" in state:
            # Generator.set_state takes a CPU ByteTensor only (a CUDA generator's state too); a
            # checkpoint loaded with map_location="cuda" holds it on the GPU.
            self.generator.set_state(state["generator_state"].cpu())

    def extra_repr(self) -> str:
        sel = "all" if self.selection is None else ",".join(self.selection)
        return f"p={self.p}, kind={self.kind}, schedule={self.schedule}, params={sel}"
