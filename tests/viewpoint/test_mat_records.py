"""MATLAB readers and the ObjectNet3D / Pascal3D+ parsers, on real files and on written ones."""

import re

import numpy as np
import pytest
import scipy.io
from dropgrad_viewpoint.data.mat import MatError, load_mat, save_mat
from dropgrad_viewpoint.data.records import Viewpoint, load_cad, parse_record


def _object(**over):
    obj = {
        "class": "mug", "bbox": np.array([5.0, 6, 50, 60]),
        "viewpoint": {"azimuth": 30.0, "elevation": 10.0, "theta": 2.0, "distance": 5.0, "focal": 1.0,
                      "px": 30.0, "py": 30.0, "viewport": 500.0},
        "cad_index": 1.0, "anchors": {"top": {"location": np.array([9.0, 8.0]), "status": 1.0}},
        "truncated": 0.0, "occluded": 0.0, "difficult": 0.0,
    }
    obj.update(over)
    return obj


def test_demo_record_from_the_annotation_tool(shared_data):
    rec = parse_record(shared_data / "objectnet3d-format-example" / "demo.mat")
    assert rec.filename == "n00.JPEG" and len(rec.objects) == 1
    obj = rec.objects[0]
    assert obj.cls == "drones" and obj.bbox.tolist() == [17, 73, 478, 375]
    vp = obj.viewpoint
    # azimuth/elevation are empty in this record: the coarse values are used.
    assert (vp.azimuth, vp.elevation) == (-2.0, 16.0)
    assert np.isclose(vp.theta, -0.52092) and np.isclose(vp.distance, 3.593763564406686)
    assert (vp.focal, vp.viewport) == (1.0, 2000.0) and np.isclose(vp.px, 249.58644888082273)
    assert obj.cad_index == 1 and obj.occluded and not obj.truncated and not obj.difficult
    assert obj.anchors == {}


@pytest.mark.parametrize(
    "name, n_models, n_kp, missing",
    [("sofa", 6, 10, [0, 0, 0, 0, 0, 0]), ("tvmonitor", 4, 8, [4, 0, 0, 4]), ("diningtable", 6, 12, [4, 4, 4, 4, 4, 8])],
)
def test_pascal3d_cad_anchors(shared_data, name, n_models, n_kp, missing):
    path = shared_data / "pascal3d" / "CAD" / f"{name}.mat"
    models = load_cad(path)
    assert len(models) == n_models
    assert [int(np.isnan(m.keypoints[:, 0]).sum()) for m in models] == missing
    raw = scipy.io.loadmat(str(path))[name]  # independent read: plain scipy, no squeezing
    for i, m in enumerate(models):
        assert len(m.names) == n_kp
        assert m.faces.min() >= 0 and m.faces.max() < len(m.vertices)
        assert np.array_equal(m.vertices, raw[0, i]["vertices"])
        for k, kp in enumerate(m.names):
            ref = raw[0, i][kp].reshape(-1)
            assert np.array_equal(m.keypoints[k], ref) if ref.size else np.isnan(m.keypoints[k]).all()


def test_cad_v73_reads_like_v5(shared_data, tmp_path):
    v5 = load_cad(shared_data / "pascal3d" / "CAD" / "tvmonitor.mat")
    raw = load_mat(shared_data / "pascal3d" / "CAD" / "tvmonitor.mat")
    # Without the per-view `visibility` cells (1 x 5256 per model, which load_cad does not read,
    # one HDF5 dataset per element: about a minute to write); everything load_cad reads stays.
    raw = {k: [{f: v for f, v in m.items() if f != "visibility"} for m in models] for k, models in raw.items()}
    save_mat(tmp_path / "tvmonitor.mat", raw, version="7.3")
    with open(tmp_path / "tvmonitor.mat", "rb") as f:
        assert f.read(10) == b"MATLAB 7.3"
    v73 = load_cad(tmp_path / "tvmonitor.mat")
    for a, b in zip(v5, v73):
        assert a.names == b.names
        assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
        assert np.array_equal(a.keypoints, b.keypoints, equal_nan=True)


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_record_round_trip(tmp_path, version):
    objs = [_object(), _object(**{"class": "cup", "difficult": 1.0, "anchors": np.zeros((0,))})]
    p = save_mat(tmp_path / "a.mat", {"record": {"filename": "a.png", "objects": objs}}, version=version)
    rec = parse_record(p)
    assert [o.cls for o in rec.objects] == ["mug", "cup"]
    assert rec.objects[0].visible_keypoints == ["top"] and rec.objects[1].anchors == {}
    assert rec.objects[1].difficult and rec.objects[0].viewpoint.theta == 2.0


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_gaps_are_read_as_the_datasets_tools_read_them(tmp_path, version):
    empty = np.zeros((0,))
    # Pascal3D+: distance 0 marks a coarse-only annotation; its tools then take the coarse angles.
    coarse = _object(viewpoint={**_object()["viewpoint"], "distance": 0.0, "azimuth_coarse": 45.0, "elevation_coarse": 15.0})
    unposed = _object(**{"class": "cup", "viewpoint": np.zeros((0, 0))})
    # The ObjectNet3D toolbox: missing/empty fine angles -> coarse; empty camera fields -> defaults.
    sparse = _object(bbox=np.array([10.0, 20, 50, 80]), viewpoint={
        "azimuth_coarse": 90.0, "elevation": empty, "elevation_coarse": 5.0, "theta": empty, "distance": empty,
        "focal": empty, "px": empty, "py": empty, "viewport": empty})
    p = save_mat(tmp_path / "a.mat", {"record": {"filename": "a.png", "objects": [coarse, unposed, sparse]}}, version=version)
    rec = parse_record(p)
    assert [o.position for o in rec.objects] == [0, 2] and rec.unposed == ["cup"]
    a, b = (o.viewpoint for o in rec.objects)
    assert (a.azimuth, a.elevation, a.theta, a.distance) == (45.0, 15.0, 2.0, 0.0)
    assert b == Viewpoint(azimuth=90.0, elevation=5.0, theta=0.0, distance=5.0, focal=1.0, px=30.0, py=50.0, viewport=2000.0)


@pytest.mark.parametrize(
    "obj, field",
    [
        ({k: v for k, v in _object().items() if k != "bbox"}, "record.objects(1).bbox"),
        (_object(viewpoint={"azimuth": 1.0}), "record.objects(1).viewpoint.distance"),
        (_object(viewpoint={"azimuth": 1.0, "distance": 5.0}), "record.objects(1).viewpoint.elevation"),
        (_object(bbox=np.array([5.0, 6, 4, 60])), "record.objects(1).bbox"),
        (_object(cad_index=0.0), "record.objects(1).cad_index"),
        # A zero-width box, a fractional or repeated CAD index, a 3-value keypoint location:
        # refused, not truncated to something that reads as valid.
        (_object(bbox=np.array([5.0, 6, 5, 60])), "record.objects(1).bbox"),
        (_object(cad_index=1.5), "record.objects(1).cad_index"),
        (_object(cad_index=np.array([1.0, 2.0])), "record.objects(1).cad_index"),
        (_object(anchors={"top": {"location": np.array([9.0, 8.0, 7.0]), "status": 1.0}}), "record.objects(1).anchors.top"),
    ],
)
def test_malformed_record_names_file_and_field(tmp_path, obj, field):
    p = save_mat(tmp_path / "bad.mat", {"record": {"filename": "a.png", "objects": [obj]}})
    with pytest.raises(MatError, match=re.escape(str(p)) + ".*" + re.escape(field)):
        parse_record(p)


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "x.mat"
    bad.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(MatError, match="x.mat: not a readable MATLAB"):
        load_mat(bad)
    with pytest.raises(MatError, match="file not found"):
        load_mat(tmp_path / "none.mat")
    save_mat(tmp_path / "cup.mat", {"other": {"a": 1.0}})
    with pytest.raises(MatError, match="no variable 'cup'"):
        load_cad(tmp_path / "cup.mat")


def test_cad_keypoints_missing_from_an_instance_are_nan_rows_in_place(tmp_path):
    from .conftest import write_matlab_cad

    tri = {"vertices": np.eye(3), "faces": np.array([[1.0, 2, 3]])}
    path = write_matlab_cad(tmp_path / "cup.mat", "cup", [
        {**tri, "keypoints": {"rim": [0.1, 0.2, 0.3], "handle": [0.4, 0.5, 0.6], "base": [0.7, 0.8, 0.9]}},
        {**tri, "keypoints": {"rim": None, "handle": [-0.4, -0.5, -0.6], "base": None}},
        {**tri, "keypoints": {"rim": [1.0, 2.0, 3.0], "handle": None, "base": [7.0, 8.0, 9.0]}},
    ])
    raw = scipy.io.loadmat(str(path))["cup"]  # independent read
    assert raw[0, 1]["rim"].shape == (0, 0) and raw[0, 2]["base"].tolist() == [[7.0, 8.0, 9.0]]
    models = load_cad(path)
    assert [m.names for m in models] == [["rim", "handle", "base"]] * 3
    nan = [np.nan] * 3
    # Row k is keypoint pnames{k} of that instance: a missing one is NaN in its own row (not
    # zero-filled, not closed up so that the next keypoint slides into its place).
    assert np.array_equal(models[0].keypoints, [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], equal_nan=True)
    assert np.array_equal(models[1].keypoints, [nan, [-0.4, -0.5, -0.6], nan], equal_nan=True)
    assert np.array_equal(models[2].keypoints, [[1.0, 2.0, 3.0], nan, [7.0, 8.0, 9.0]], equal_nan=True)
    assert all(np.array_equal(m.faces, [[0, 1, 2]]) for m in models)


def _cell_2x3():
    cell = np.empty((2, 3), dtype=object)
    for r in range(2):
        for c in range(3):
            cell[r, c] = f"r{r}c{c}" if (r + c) % 2 else np.array([[10.0 * r + c, -1.0]])  # strings and arrays
    return cell


def _check_cell(got, ref):
    # The normal form's list is MATLAB's linear order c{:}: element (r, c) at r + c * rows.
    rows, cols = ref.shape
    assert isinstance(got, list) and len(got) == rows * cols
    for r in range(rows):
        for c in range(cols):
            want = ref[r, c]
            item = got[r + c * rows]
            if isinstance(want, str):
                assert isinstance(item, str) and item == want, (r, c, item)
            else:
                assert isinstance(item, np.ndarray) and np.array_equal(item, np.squeeze(want)), (r, c, item)


def test_v5_2d_cell_array_elements_keep_their_matlab_row_and_column(tmp_path):
    scipy.io.savemat(str(tmp_path / "c.mat"), {"c": _cell_2x3()})
    ref = scipy.io.loadmat(str(tmp_path / "c.mat"), chars_as_strings=True)["c"]  # the independent read
    assert ref.shape == (2, 3)
    ref = np.vectorize(lambda v: str(v[0]) if v.dtype.kind == "U" else v, otypes=[object])(ref)
    _check_cell(load_mat(tmp_path / "c.mat")["c"], ref)


def test_v73_2d_cell_array_reads_in_the_same_order_as_v5(tmp_path):
    import h5py

    # MATLAB's v7.3 layout, written by hand: HDF5 dimensions are MATLAB's reversed, so the
    # 2 x 3 cell is a 3 x 2 dataset of references whose element [c, r] is cell (r, c).
    cell = _cell_2x3()
    path = tmp_path / "c.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        table = np.empty((3, 2), dtype=h5py.ref_dtype)
        for r in range(2):
            for c in range(3):
                v = cell[r, c]
                if isinstance(v, str):
                    d = refs.create_dataset(f"e{r}{c}", data=np.array([[ord(ch)] for ch in v], dtype=np.uint16))
                    d.attrs["MATLAB_class"] = np.bytes_("char")
                else:
                    d = refs.create_dataset(f"e{r}{c}", data=v.T)
                    d.attrs["MATLAB_class"] = np.bytes_("double")
                table[c, r] = d.ref
        d = f.create_dataset("c", data=table)
        d.attrs["MATLAB_class"] = np.bytes_("cell")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
    _check_cell(load_mat(path)["c"], cell)
    scipy.io.savemat(str(tmp_path / "v5.mat"), {"c": cell})
    v5 = load_mat(tmp_path / "v5.mat")["c"]
    v73 = load_mat(path)["c"]
    assert all(a == b if isinstance(a, str) else np.array_equal(a, b) for a, b in zip(v5, v73))


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_cad_with_a_single_keypoint_name(tmp_path, version):
    # A 1 x 1 pnames cell reads back as one string (scipy squeezes it): one name, not its letters.
    model = {"vertices": np.eye(3), "faces": np.array([[1.0, 2, 3]]), "pnames": ["tip"], "tip": np.array([0.0, 0, 1])}
    models = load_cad(save_mat(tmp_path / "pen.mat", {"pen": [model, model]}, version=version))
    assert [m.names for m in models] == [["tip"], ["tip"]]
    assert np.array_equal(models[0].keypoints, [[0.0, 0.0, 1.0]])


def test_char_matrix_reads_as_its_rows_in_v5_and_v73(tmp_path):
    import h5py

    scipy.io.savemat(str(tmp_path / "v5.mat"), {"c": np.array(["abc", "def"])})  # a 2 x 3 char array
    assert load_mat(tmp_path / "v5.mat")["c"] == ["abc", "def"]
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        # HDF5 dimensions are MATLAB's reversed: element [j, i] is character (i, j).
        d = f.create_dataset("c", data=np.array([[ord(ch) for ch in row] for row in ("abc", "def")], dtype=np.uint16).T)
        d.attrs["MATLAB_class"] = np.bytes_("char")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
    assert load_mat(path)["c"] == ["abc", "def"]
