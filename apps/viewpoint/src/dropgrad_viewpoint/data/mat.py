"""Read (and write) MATLAB ``.mat`` files as plain Python: v5 through scipy, v7.3 through h5py.

Both versions come back in one normal form, so parsers never care which one a file is:

* a scalar struct -> ``dict``; a struct array -> ``list`` of ``dict``
* a cell array -> ``list``; a char array -> ``str``
* a numeric array -> ``numpy.ndarray`` in MATLAB's (row, column) orientation with singleton
  dimensions squeezed (a scalar is a 0-d array); an empty value -> an empty ``ndarray``

:func:`save_mat` writes the same normal form back (v5 with scipy, or v7.3 with h5py in
MATLAB's HDF5 layout: 512-byte header, ``MATLAB_class`` attributes, struct-array fields and
cells as object references under ``#refs#``), which the synthetic data set and the tests use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MatError", "load_mat", "save_mat"]


class MatError(ValueError):
    """A ``.mat`` file that cannot be read, or lacks a field we need (the message names both)."""


# ----------------------------------------------------------------------------------- v5
def _from_v5(value: Any) -> Any:
    from scipy.io.matlab import mat_struct

    if isinstance(value, mat_struct):
        return {name: _from_v5(getattr(value, name)) for name in value._fieldnames}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_from_v5(v) for v in value.reshape(-1, order="F")]
        if value.dtype.kind == "U":
            return str(value.squeeze()) if value.size == 1 else [str(v) for v in value.reshape(-1)]
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.number, bool)):
        return np.asarray(value)
    return value


def _load_v5(path: Path) -> dict[str, Any]:
    import scipy.io

    raw = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False, chars_as_strings=True)
    return {k: _from_v5(v) for k, v in raw.items() if not k.startswith("__")}


# --------------------------------------------------------------------------------- v7.3
def _h5_value(f: Any, node: Any) -> Any:
    import h5py

    if isinstance(node, h5py.Group):
        mclass = _attr_str(node.attrs.get("MATLAB_class", b"struct"))
        if mclass != "struct":
            raise MatError(f"unsupported MATLAB class {mclass!r} at {node.name}")
        fields = {name: node[name] for name in node}
        # A struct array stores, per field, one object reference per element (a dataset without
        # a MATLAB_class); a scalar struct stores its fields directly (a cell field says "cell").
        ref_fields = [
            d for d in fields.values()
            if isinstance(d, h5py.Dataset) and d.dtype == h5py.ref_dtype and "MATLAB_class" not in d.attrs
        ]
        if fields and len(ref_fields) == len(fields):
            n = next(iter(ref_fields)).size
            columns = {name: [_h5_value(f, f[r]) for r in d[()].reshape(-1, order="C")] for name, d in fields.items()}
            return [{name: columns[name][i] for name in fields} for i in range(n)]
        return {name: _h5_value(f, d) for name, d in fields.items()}
    mclass = _attr_str(node.attrs.get("MATLAB_class", b"double"))
    if int(np.asarray(node.attrs.get("MATLAB_empty", 0)).reshape(-1)[0]):
        return "" if mclass == "char" else np.zeros((0,))
    data = node[()]
    if mclass == "cell":
        # MATLAB orientation, then its linear (column-major) order, as the v5 reader lists cells.
        return [_h5_value(f, f[r]) for r in np.asarray(data).T.reshape(-1, order="F")]
    if mclass == "char":
        codes = np.asarray(data).T  # MATLAB column-major -> rows of characters
        rows = ["".join(chr(c) for c in row) for row in np.atleast_2d(codes)]
        return rows[0] if len(rows) == 1 else rows
    arr = np.asarray(data).T
    if mclass == "logical":
        arr = arr.astype(bool)
    return np.squeeze(arr)


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, np.ndarray):
        return _attr_str(value.reshape(-1)[0]) if value.size else ""
    return str(value)


def _load_v73(path: Path) -> dict[str, Any]:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _h5_value(f, f[k]) for k in f if not k.startswith("#")}


# ------------------------------------------------------------------------------- public
def load_mat(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a v5 or v7.3 ``.mat`` file into the normal form described in the module docstring.

    Raises:
        MatError: the file is missing or not a readable MATLAB file (the message names it).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "a.mat"
    >>> _ = save_mat(p, {"s": {"name": "cup", "xy": np.array([1.0, 2.0])}}, version="7.3")
    >>> m = load_mat(p)
    >>> m["s"]["name"], m["s"]["xy"].tolist()
    ('cup', [1.0, 2.0])
    """
    path = Path(path)
    if not path.is_file():
        raise MatError(f"{path}: file not found")
    try:
        import h5py

        if h5py.is_hdf5(str(path)):
            return _load_v73(path)
        return _load_v5(path)
    except MatError as exc:
        raise MatError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001  (scipy/h5py raise many types for damaged files)
        raise MatError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None


def _to_v5(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_v5(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            names = list(value[0])
            arr = np.empty((1, len(value)), dtype=[(n, object) for n in names])
            for i, v in enumerate(value):
                for n in names:
                    arr[0, i][n] = _to_v5(v[n])
            return arr
        cell = np.empty((1, len(value)), dtype=object)
        for i, v in enumerate(value):
            cell[0, i] = _to_v5(v)
        return cell
    return value


def _write_h5(f: Any, group: Any, name: str, value: Any) -> None:
    import h5py

    if isinstance(value, dict):
        sub = group.create_group(name)
        sub.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in value.items():
            _write_h5(f, sub, k, v)
        return
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        sub = group.create_group(name)
        sub.attrs["MATLAB_class"] = np.bytes_("struct")
        for field in value[0]:
            refs = np.empty((len(value), 1), dtype=h5py.ref_dtype)
            for i, v in enumerate(value):
                refs[i, 0] = _ref(f, v[field])
            sub.create_dataset(field, data=refs)
        return
    if isinstance(value, list):
        refs = np.empty((len(value), 1), dtype=h5py.ref_dtype)
        for i, v in enumerate(value):
            refs[i, 0] = _ref(f, v)
        d = group.create_dataset(name, data=refs)
        d.attrs["MATLAB_class"] = np.bytes_("cell")
        return
    if isinstance(value, str):
        codes = np.array([[ord(c)] for c in value], dtype=np.uint16) if value else np.array([0, 0], dtype=np.uint64)
        d = group.create_dataset(name, data=codes)
        d.attrs["MATLAB_class"] = np.bytes_("char")
        if not value:
            d.attrs["MATLAB_empty"] = np.uint8(1)
        return
    arr = np.asarray(value)
    if arr.size == 0:
        d = group.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
        d.attrs["MATLAB_class"] = np.bytes_("double")
        d.attrs["MATLAB_empty"] = np.uint8(1)
        return
    kind = {"f": "double", "i": "int64", "u": "uint64", "b": "logical"}[arr.dtype.kind]
    arr = np.atleast_2d(arr.astype(np.float64) if kind == "double" else arr.astype(np.uint8) if kind == "logical" else arr)
    d = group.create_dataset(name, data=arr.T)  # MATLAB is column-major
    d.attrs["MATLAB_class"] = np.bytes_(kind)


def _ref(f: Any, value: Any) -> Any:
    refs = f.require_group("#refs#")
    # Reserve the name before writing: nested values take names of their own meanwhile.
    count = int(refs.attrs.get("next", 0))
    refs.attrs["next"] = count + 1
    name = f"r{count}"
    _write_h5(f, refs, name, value)
    return refs[name].ref


def save_mat(path: str | os.PathLike[str], variables: dict[str, Any], version: str = "5") -> Path:
    """Write variables (in the normal form) to a ``.mat`` file, version ``"5"`` or ``"7.3"``.

    The file is written to a temporary name and renamed, so a crash never leaves half a file.
    """
    import h5py
    import scipy.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if version == "5":
        scipy.io.savemat(str(tmp), {k: _to_v5(v) for k, v in variables.items()}, format="5", oned_as="row")
    elif version == "7.3":
        with h5py.File(tmp, "w", userblock_size=512) as f:
            for k, v in variables.items():
                _write_h5(f, f, k, v)
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: dropgrad-viewpoint HDF5 schema 1.00 ."
        with open(tmp, "r+b") as fh:
            fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
    else:
        raise ValueError(f"save_mat: version must be '5' or '7.3', got {version!r}")
    os.replace(tmp, path)
    return path
