"""Read MatConvNet's ``imagenet-vgg-m.mat`` (VGG-M) into :class:`~.vggm.VGGM`'s conv1-3.

The file is a MATLAB (v5/v7) struct read with ``scipy.io.loadmat``; nothing is unpickled.
``layers`` is a cell array of layer structs with ``name``, ``type`` (``'conv'``, ``'relu'``,
``'lrn'``, ``'pool'``, ...), ``stride``, ``pad`` and the weights, either as

- ``weights`` = ``{filters, biases}`` (MatConvNet beta-16 and later), or
- separate ``filters`` and ``biases`` fields (the older release of the same file).

``filters`` are ``H x W x in x out`` and become torch's ``out x in x H x W``; ``biases`` are
``1 x out`` or ``out x 1``. Some files wrap everything in a ``net`` struct (``net.layers``);
both are read. VGG-M's conv2/conv3 padding is ignored (MDNet runs them unpadded on 107x107
crops); the strides must match MDNet's (2, 2, 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from .vggm import VGGM, conv_layers

__all__ = ["MatConvNetError", "load_vggm_mat", "read_matconvnet_convs"]

CONV_NAMES = ("conv1", "conv2", "conv3")
STRIDES = {"conv1": 2, "conv2": 2, "conv3": 1}


class MatConvNetError(ValueError):
    """A MatConvNet ``.mat`` file that is unreadable or lacks a (well-shaped) layer; names the file."""


def _field(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) if hasattr(obj, "_fieldnames") else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    arr = np.asarray(value)
    return str(arr.item()) if arr.size == 1 else "".join(str(v) for v in arr.ravel())


def _load_layers(path: Path) -> list[Any]:
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except NotImplementedError as err:  # scipy's message for MATLAB v7.3 (HDF5) files
        raise MatConvNetError(
            f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB with "
            f"save(..., '-v7') or use MatConvNet's own imagenet-vgg-m.mat"
        ) from err
    except (ValueError, TypeError, OSError, scipy.io.matlab.MatReadError) as err:  # MatReadError: empty or truncated
        raise MatConvNetError(f"{path}: not a readable MATLAB .mat file ({err})") from err
    layers = mat.get("layers")
    if layers is None and "net" in mat:
        layers = _field(mat["net"], "layers")
    if layers is None:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise MatConvNetError(f"{path}: no 'layers' cell array (MatConvNet simplenn layout expected); variables: {keys}")
    return list(np.atleast_1d(layers))


def _weights(layer: Any) -> tuple[Any, Any]:
    weights = _field(layer, "weights")
    if weights is not None:
        cell = list(np.atleast_1d(weights))
        if len(cell) == 2:
            return cell[0], cell[1]
        return (cell[0] if cell else None), None
    return _field(layer, "filters"), _field(layer, "biases")


def read_matconvnet_convs(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """conv1-conv3 of a MatConvNet VGG-M file: ``{name: (filters HxWxinxout, biases (out,))}``.

    Layers are found by name (``conv1``..``conv3``) or, in files where no layer has those names, as the first
    three layers of type ``conv``.

    Raises:
        MatConvNetError: unreadable file, no ``layers``, a missing conv layer or missing weights;
            the message names the file and the layer.
    """
    path = Path(path)
    if not path.is_file():
        raise MatConvNetError(f"--backbone-weights {path}: no such file (expected MatConvNet's imagenet-vgg-m.mat)")
    layers = _load_layers(path)
    named = {_text(_field(layer, "name")): layer for layer in layers}
    unnamed_convs = [layer for layer in layers if _text(_field(layer, "type")) == "conv"]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, name in enumerate(CONV_NAMES):
        layer = named.get(name)
        if layer is None and not any(n in named for n in CONV_NAMES):
            layer = unnamed_convs[i] if i < len(unnamed_convs) else None
        if layer is None:
            raise MatConvNetError(f"{path}: no layer named {name!r} (layers: {', '.join(n for n in named if n) or 'unnamed'})")
        filters, biases = _weights(layer)
        if filters is None or biases is None:
            raise MatConvNetError(f"{path}: layer {name!r} has no weights (expected 'weights' = {{filters, biases}} "
                                  f"or 'filters' and 'biases' fields)")
        stride = _field(layer, "stride")
        if stride is not None and np.size(stride) and int(np.ravel(stride)[0]) != STRIDES[name]:
            raise MatConvNetError(f"{path}: layer {name!r} has stride {np.ravel(stride).tolist()}; "
                                  f"VGG-M (MDNet) has stride {STRIDES[name]}")
        out[name] = (np.asarray(filters, dtype=np.float32), np.asarray(biases, dtype=np.float32).reshape(-1))
    return out


def load_vggm_mat(model: VGGM, path: str | os.PathLike[str]) -> VGGM:
    """Copy conv1-conv3 of MatConvNet's ``imagenet-vgg-m.mat`` into ``model`` (in place; returned).

    Raises:
        MatConvNetError: see :func:`read_matconvnet_convs`; also a filter or bias whose shape
            does not match the model's layer (names the file, the layer and both shapes).

    >>> import tempfile
    >>> from dropgrad_tracking.models.vggm import build_vggm
    >>> path = tempfile.mkdtemp() + "/bad.mat"
    >>> scipy.io.savemat(path, {"x": 1})
    >>> load_vggm_mat(build_vggm(tiny=True), path)
    Traceback (most recent call last):
    ...
    dropgrad_tracking.models.matconvnet.MatConvNetError: ...bad.mat: no 'layers' cell array ...
    """
    convs = read_matconvnet_convs(path)
    for name, conv in conv_layers(model).items():
        filters, biases = convs[name]
        out_c, in_c, kh, kw = conv.weight.shape
        if filters.ndim == 3 and in_c == 1:
            filters = filters[:, :, None, :]  # squeeze_me drops a singleton input-channel axis
        if filters.shape != (kh, kw, in_c, out_c):
            raise MatConvNetError(f"{path}: layer {name!r} filters have shape {filters.shape}; "
                                  f"expected {(kh, kw, in_c, out_c)} (H x W x in x out)")
        if biases.shape != (out_c,):
            raise MatConvNetError(f"{path}: layer {name!r} biases have {biases.size} values; expected {out_c}")
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(filters.transpose(3, 2, 0, 1))))
            conv.bias.copy_(torch.from_numpy(biases))
    return model
