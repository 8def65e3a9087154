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
