"""The synthetic generator writes ObjectNet3D files that the one real loader reads back exactly."""

import filecmp

import numpy as np
import pytest
import torch
from dropgrad_viewpoint.data.mat import MatError, save_mat
from dropgrad_viewpoint.data.objectnet3d import (
    CategoryData,
    ObjectNet3D,
    crop_object,
    make_split,
)
from dropgrad_viewpoint.data.synthetic import (
    _camera,
    ensure_synthetic,
    generate_synthetic,
)
from dropgrad_viewpoint.geometry import (
    project_points,
    rotation_error_deg,
    unproject_points,
    viewpoint_to_rotation,
    weighted_procrustes,
)
from dropgrad_viewpoint.methods.pose import rotations_from_prediction

from .conftest import SMALL


def test_loader_reads_back_exact_viewpoints_and_keypoints(small_synthetic):
    ds = ObjectNet3D(small_synthetic, ["train", "val"])
    assert ds.categories == SMALL.category_names()
    assert len(ds.items) == len(SMALL.category_names()) * SMALL.images_per_category
    for it in ds.items:
        c = SMALL.category_names().index(it.ann.cls)
        i = int(it.record_path.stem.split("_")[1])
        # The generator's draws for this image, made again from its seed: CAD model, then camera.
        rng = np.random.default_rng([SMALL.seed, c, 3000 + i])
        assert it.ann.cad_index == 1 + int(rng.integers(SMALL.cad_per_category))
        cam = _camera(rng, SMALL.image_size)
        vp = it.ann.viewpoint
        assert (vp.azimuth, vp.elevation, vp.theta, vp.distance, vp.px, vp.py, vp.viewport) == tuple(
            cam[k] for k in ("azimuth", "elevation", "theta", "distance", "px", "py", "viewport"))
        cad = ds.cad(it.ann.cls)[it.ann.cad_index - 1]
        uv, _ = project_points(cad.keypoints, **cam)
        for k, name in enumerate(cad.names):
            assert np.array_equal(it.ann.anchors[name][0], uv[k])


def test_v73_cad_files_are_written_and_read(small_synthetic):
    with open(small_synthetic / "CAD" / "shape02.mat", "rb") as f:
        assert f.read(10) == b"MATLAB 7.3"
    ds = ObjectNet3D(small_synthetic, ["train"])
    assert 5 <= len(ds.keypoint_names("shape02")) <= 24


def test_generation_is_deterministic(small_synthetic, tmp_path):
    again = generate_synthetic(tmp_path / "again", SMALL)
    for sub in ("Images", "Image_sets"):
        names = sorted(p.name for p in (small_synthetic / sub).iterdir())
        _match, mismatch, errors = filecmp.cmpfiles(small_synthetic / sub, again / sub, names, shallow=False)
        assert not mismatch and not errors, (sub, mismatch)
    # .mat headers carry a creation time: compare what they hold.
    a, b = ObjectNet3D(small_synthetic, ["train", "val"]), ObjectNet3D(again, ["train", "val"])
    for x, y in zip(a.items, b.items):
        assert x.ann.viewpoint == y.ann.viewpoint and np.array_equal(x.ann.bbox, y.ann.bbox)
        assert all(np.array_equal(x.ann.anchors[k][0], y.ann.anchors[k][0]) for k in x.ann.anchors)
    for c in a.categories:
        for m, n in zip(a.cad(c), b.cad(c)):
            assert np.array_equal(m.vertices, n.vertices) and np.array_equal(m.keypoints, n.keypoints)


def test_ensure_refuses_other_folders(small_synthetic, tmp_path):
    assert ensure_synthetic(small_synthetic, SMALL) == small_synthetic
    with pytest.raises(ValueError, match="other options"):
        ensure_synthetic(small_synthetic)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(ValueError, match="not a synthetic set"):
        ensure_synthetic(tmp_path / "x")


def test_oracle_predictions_give_near_zero_error(small_synthetic):
    ds = ObjectNet3D(small_synthetic, ["val"])
    for cls in SMALL.novel_names():
        items = ds.usable(cls, "test")
        data = CategoryData.build(ds, cls, items, 64)
        vis = data.visible.numpy()
        # Weak perspective from the crop: true 2D keypoints, depth and canonical coordinates.
        rots = rotations_from_prediction(data.kp2d, data.depth, data.canon, vis.astype(float))
        err = rotation_error_deg(rots, data.rotation.numpy().astype(np.float64))
        assert np.median(err) < 2.0 and err.max() < 6.0
        # Full perspective with the annotated camera: exact.
        for it in items:
            vp = it.ann.viewpoint
            cad = ds.cad(cls)[it.ann.cad_index - 1]
            uv, z = project_points(cad.keypoints, vp.azimuth, vp.elevation, vp.theta, vp.distance, vp.focal, vp.px, vp.py, vp.viewport)
            r, _, _ = weighted_procrustes(cad.keypoints, unproject_points(uv, z, vp.focal, vp.px, vp.py, vp.viewport))
            assert rotation_error_deg(r, viewpoint_to_rotation(vp.azimuth, vp.elevation, vp.theta)) < 1e-4


def test_crop_is_square_with_context_and_maps_keypoints():
    img = np.zeros((100, 120, 3), np.uint8)
    img[39, 59] = 255  # annotation pixel (60, 40), 1-based
    crop, center, side = crop_object(img, np.array([40.0, 30, 80, 50]), 60)
    assert side == 60.0 and center.tolist() == [60.0, 40.0]
    ys, xs = np.nonzero(crop[..., 0] == crop[..., 0].max())
    assert abs(xs.mean() - 29.5) <= 1 and abs(ys.mean() - 29.5) <= 1  # the crop's centre


def _folder(tmp_path, objects, n_cad=1):
    root = tmp_path / "on3d"
    for sub in ("Annotations", "Images", "Image_sets", "CAD"):
        (root / sub).mkdir(parents=True)
    save_mat(root / "CAD" / "mug.mat", {"mug": [{"vertices": np.eye(3), "faces": np.array([[1.0, 2, 3]]), "pnames": ["a", "b"],
                                                 "a": np.array([0.1, 0, 0]), "b": np.array([0, 0.1, 0])}] * n_cad})
    ids = []
    for i, obj in enumerate(objects):
        save_mat(root / "Annotations" / f"im{i}.mat", {"record": {"filename": f"im{i}.png", "objects": [obj]}})
        (root / "Images" / f"im{i}.png").write_bytes(b"")
        ids.append(f"im{i}")
    (root / "Image_sets" / "train.txt").write_text("\n".join(ids) + "\n")
    return root


def _obj(**over):
    vp = {"azimuth": 0.0, "elevation": 0.0, "theta": 0.0, "distance": 5.0, "focal": 1.0, "px": 20.0, "py": 20.0, "viewport": 100.0}
    obj = {"class": "mug", "bbox": np.array([1.0, 1, 30, 30]), "viewpoint": vp, "cad_index": 1.0,
           "anchors": {"a": {"location": np.array([5.0, 5.0]), "status": 1.0}}, "truncated": 0.0, "occluded": 0.0, "difficult": 0.0}
    obj.update(over)
    return obj


def test_train_and_test_filters(tmp_path):
    no_kp = {"a": {"location": np.zeros((0,)), "status": 0.0}}
    occluded_kp = {"a": {"location": np.array([5.0, 5.0]), "status": 3.0}}
    objs = [_obj(), _obj(difficult=1.0), _obj(truncated=1.0), _obj(occluded=1.0), _obj(anchors=no_kp), _obj(anchors=occluded_kp)]
    ds = ObjectNet3D(_folder(tmp_path, objs), ["train"])
    assert [int(it.record_path.stem[2:]) for it in ds.usable("mug", "train")] == [0, 2, 3]
    assert [int(it.record_path.stem[2:]) for it in ds.usable("mug", "test")] == [0]


def test_cad_index_beyond_the_cad_file_names_file_and_field(tmp_path):
    root = _folder(tmp_path, [_obj(), _obj(cad_index=2.0)])
    with pytest.raises(MatError, match=r"im1\.mat: field record\.objects\(1\)\.cad_index=2 is beyond .*mug\.mat, which holds 1"):
        ObjectNet3D(root, ["train"])


def test_too_few_usable_novel_objects_is_an_error(small_synthetic):
    base, novel = ObjectNet3D(small_synthetic, ["train"]), ObjectNet3D(small_synthetic, ["val"])
    split = make_split(base, novel, SMALL.novel_names(), 1, 5, 0)
    assert len(split.val) == 1 and sorted(split.train + split.val) == SMALL.category_names()[:4]
    with pytest.raises(ValueError, match=r"novel category 'shape04' has \d+ usable test object\(s\).*needs at least 15"):
        make_split(base, novel, SMALL.novel_names(), 1, 14, 0)


def test_missing_image_set_is_named(small_synthetic):
    with pytest.raises(FileNotFoundError, match="Image_sets/test.txt not found"):
        ObjectNet3D(small_synthetic, ["test"])


def test_category_targets_are_consistent(small_synthetic):
    ds = ObjectNet3D(small_synthetic, ["train"])
    data = CategoryData.build(ds, "shape00", ds.usable("shape00", "train"), 64)
    assert data.images.shape[1:] == (3, 64, 64) and data.kp2d.shape[1] == data.n_keypoints
    assert data.visible.any(1).all() and torch.all(data.kp2d.abs() < 0.5)
    assert torch.allclose(data.rotation @ data.rotation.transpose(1, 2), torch.eye(3).expand(len(data), 3, 3), atol=1e-5)


def test_body_sides_have_their_own_colour_slots():
    from dropgrad_viewpoint.data.shapes import N_PARTS, ShapeTemplate, make_instance

    for body in ("box", "cylinder"):
        t = ShapeTemplate("c", body, np.array([0.8, 0.6, 0.5]), 0, 0.5, False, 0, False, N_PARTS)
        mesh = make_instance(t, np.random.default_rng(0))
        tri = mesh.vertices[mesh.faces]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        # Faces on different sides (normals pointing apart) get different slots, so no turn about
        # the vertical axis maps the body's colours onto themselves.
        sides = np.abs(normal[:, 2]) < 1e-9 * np.abs(normal).max()
        azim = np.degrees(np.arctan2(normal[sides, 1], normal[sides, 0])) % 360
        parts = mesh.face_part[sides]
        assert len(set(parts.tolist())) == 4 and parts.max() < N_PARTS
        for a in (90, 180, 270):
            turned = (azim + a) % 360
            same = [parts[np.argmin(np.abs((azim - t + 180) % 360 - 180))] for t in turned]
            assert not np.array_equal(np.array(same), parts), (body, a)


def test_ensure_refuses_a_version_1_folder(small_synthetic, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(small_synthetic, old)
    saved = json.loads((old / "synthetic.json").read_text())
    del saved["version"]  # version 1 wrote no version field
    (old / "synthetic.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="other options"):
        ensure_synthetic(old, SMALL)


def _with_images(root, height=40, width=60):
    """Replace the empty image files of :func:`_folder` by a smooth colour image; returns it (BGR)."""
    import cv2

    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)
    for path in (root / "Images").iterdir():
        cv2.imwrite(str(path), img)
    return img


def test_objects_without_a_pose_are_counted_and_later_ones_keep_their_position(tmp_path):
    root = _folder(tmp_path, [_obj()])
    save_mat(root / "Annotations" / "im0.mat", {"record": {"filename": "im0.png", "objects": [
        _obj(viewpoint=np.zeros((0, 0))), _obj(cad_index=2.0)]}})
    with pytest.raises(MatError, match=r"im0\.mat: field record\.objects\(2\)\.cad_index=2"):
        ObjectNet3D(root, ["train"])
    save_mat(root / "Annotations" / "im0.mat", {"record": {"filename": "im0.png", "objects": [
        _obj(viewpoint=np.zeros((0, 0))), _obj()]}})
    ds = ObjectNet3D(root, ["train"])
    assert ds.unposed == {"mug": 1} and [it.index for it in ds.items] == [1]
    assert ObjectNet3D(root, ["train"], categories=["cup"]).unposed == {}


def test_depth_is_marked_unknown_where_no_scale_can_be_fitted(tmp_path):
    coarse = {"azimuth": 0.0, "elevation": 0.0, "theta": 0.0, "distance": 0.0, "focal": 1.0, "px": 20.0, "py": 20.0,
              "viewport": 100.0}
    both = {"a": {"location": np.array([12.0, 15.0]), "status": 1.0}, "b": {"location": np.array([18.0, 11.0]), "status": 1.0}}
    root = _folder(tmp_path, [_obj(), _obj(viewpoint=coarse), _obj(viewpoint=coarse, anchors=both)])
    _with_images(root)
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.usable("mug", "train"), 32)
    # A distance gives the scale; without one, two keypoints fit it; one keypoint cannot.
    assert data.depth_valid.tolist() == [[True, True], [False, False], [True, True]]
    assert data.depth[1].abs().sum() == 0 and data.depth[2].abs().sum() > 0


def test_images_are_read_as_stored_without_exif_rotation(tmp_path):
    import cv2
    from PIL import Image

    root = _folder(tmp_path, [_obj(bbox=np.array([5.0, 5, 30, 25]))])
    img = _with_images(root)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    path = root / "Images" / "im0.png"  # JPEG bytes under the record's name: readers go by content
    Image.fromarray(img[..., ::-1]).save(path, format="JPEG", quality=100, exif=exif)
    assert cv2.imread(str(path), cv2.IMREAD_COLOR).shape == (60, 40, 3)  # what honouring the tag gives
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.usable("mug", "train"), 32)
    expected, _, _ = crop_object(img, ds.items[0].ann.bbox, 32)
    assert np.abs(data.raw_crops[0].astype(int) - expected).mean() < 3


def test_novel_categories_stay_out_of_training_when_the_base_image_sets_hold_them(small_synthetic):
    # ObjectNet3D's own image sets mix every category; only the split keeps the novel ones out.
    base, novel = ObjectNet3D(small_synthetic, ["train", "val"]), ObjectNet3D(small_synthetic, ["val"])
    assert set(SMALL.novel_names()) <= set(base.categories)
    split = make_split(base, novel, SMALL.novel_names(), 1, 5, 0)
    assert set(split.train + split.val).isdisjoint(SMALL.novel_names())
    assert split.test == SMALL.novel_names() and sorted(split.train + split.val) == SMALL.category_names()[:4]


def test_crop_puts_a_marked_pixel_exactly_where_its_keypoint_maps():
    # Box 80 x 40 -> side 120, crop size 60: 2 image pixels per crop pixel, and the crop's
    # pixel centres fall on whole image pixels, so the bilinear read copies pixels exactly.
    img = np.zeros((100, 120, 3), np.uint8)
    img[30, 40] = (10, 20, 250)  # annotation pixel (41, 31), 1-based
    crop, center, side = crop_object(img, np.array([20.0, 30, 100, 70]), 60)
    assert center.tolist() == [60.0, 50.0] and side == 120.0
    q = (np.array([41.0, 31.0]) - center) / side  # the documented keypoint mapping
    assert q.tolist() == [-19 / 120, -19 / 120]
    col, row = (q + 0.5) * 60 - 0.5  # crop pixel (i) has its centre at (i + 0.5) / size - 0.5
    assert (col, row) == (20.0, 20.0)
    assert crop[20, 20].tolist() == [10, 20, 250]
    assert np.count_nonzero(crop.any(-1)) == 1  # and nowhere else: no one-pixel smear or shift


def test_crop_samples_the_image_where_the_keypoint_mapping_says_at_any_scale():
    # Float image whose channels hold each pixel's own 0-based (x, y): bilinear reads of it are
    # exact, so every crop pixel says which image point it was read from.
    y, x = np.mgrid[0:120, 0:140].astype(np.float32)
    ramp = np.dstack([x, y, np.zeros_like(x)])
    bbox = np.array([43.3, 51.7, 81.9, 78.2])
    crop, center, side = crop_object(ramp, bbox, 37)
    assert np.allclose(center, [62.6, 64.95]) and np.isclose(side, 1.5 * 38.6)
    # Crop pixel i's centre is normalised (i + 0.5) / 37 - 0.5, i.e. 1-based image point
    # centre + side * that, i.e. array position (1-based) - 1; in float64, by hand.
    i = np.arange(37, dtype=np.float64)
    expect_x = 62.6 + side * ((i + 0.5) / 37 - 0.5) - 1.0
    expect_y = 64.95 + side * ((i + 0.5) / 37 - 0.5) - 1.0
    assert np.abs(crop[..., 0] - expect_x[None, :]).max() < 0.02
    assert np.abs(crop[..., 1] - expect_y[:, None]).max() < 0.02


def test_category_crops_hold_each_keypoints_pixel_at_its_kp2d(tmp_path):
    import cv2

    anchors = {"a": {"location": np.array([41.0, 31.0]), "status": 1.0}, "b": {"location": np.array([81.0, 61.0]), "status": 1.0}}
    root = _folder(tmp_path, [_obj(bbox=np.array([20.0, 30, 100, 70]), anchors=anchors)])
    img = np.zeros((100, 120, 3), np.uint8)
    img[30, 40] = (0, 0, 255)  # keypoint a, BGR
    img[60, 80] = (0, 255, 0)  # keypoint b
    cv2.imwrite(str(root / "Images" / "im0.png"), img)
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.items, 60)
    # (location - box centre (60, 50)) / side 120, by hand.
    assert data.kp2d[0].tolist() == [[np.float32(-19 / 120)] * 2, [np.float32(21 / 120), np.float32(11 / 120)]]
    assert data.visible[0].tolist() == [True, True]
    crop = data.raw_crops[0]
    for (u, v), color in zip(data.kp2d[0].double().numpy(), [(0, 0, 255), (0, 255, 0)]):
        col, row = (u + 0.5) * 60 - 0.5, (v + 0.5) * 60 - 0.5  # a whole crop pixel (to float32 rounding)
        assert abs(col - round(col)) < 1e-5 and abs(row - round(row)) < 1e-5
        assert crop[round(row), round(col)].tolist() == list(color)
    assert np.count_nonzero(crop.any(-1)) == 2


def test_renderer_fills_exactly_the_projected_polygon():
    from dropgrad_viewpoint.data.render import keypoint_visibility, render_mesh
    from dropgrad_viewpoint.data.shapes import Mesh

    # A 2 x 2 square in z = 0, seen straight down (R = I), 10 pixels per unit: its corners project,
    # by hand, to 1-based pixels x = 32 -+ 10, y = 30 -+ 10, i.e. array columns 21..41, rows 19..39.
    square = Mesh(np.array([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]]), np.array([[0, 1, 2], [0, 2, 3]]),
                  np.zeros(2, np.int64), ["k"], np.array([[0.3, -0.4, 0.0]]))
    cam = {"azimuth": 0.0, "elevation": 90.0, "theta": 0.0, "distance": 5.0, "focal": 1.0, "px": 32.0, "py": 30.0, "viewport": 50.0}
    _, mask = render_mesh(np.zeros((64, 64, 3), np.uint8), square, np.array([[200.0, 200, 200]]), cam, np.random.default_rng(0))
    expected = np.zeros((64, 64), bool)
    expected[19:40, 21:42] = True
    assert np.array_equal(mask > 0, expected)
    # Keypoints count as in the image between its outer pixel edges, 1-based 0.5 .. size + 0.5.
    # 8 pixels per unit: x = -3.94, -3.9375, 4.0625, 4.07 project to u = 0.48, 0.5, 64.5, 64.56.
    edge = Mesh(square.vertices, square.faces, square.face_part, list("abcd"),
                np.array([[-3.94, 0, 0], [-3.9375, 0, 0], [4.0625, 0, 0], [4.07, 0, 0]]))
    assert keypoint_visibility(edge, {**cam, "viewport": 40.0}, 64).tolist() == [False, True, True, False]


def test_synthetic_boxes_enclose_the_rendered_object_to_half_a_pixel(small_synthetic):
    # The box is the rendered mask's extent in 1-based pixels; the mask fills the projected
    # mesh, so each box side is the projected vertices' extreme, rounded to a pixel centre.
    ds = ObjectNet3D(small_synthetic, ["train", "val"])
    errors = []
    for it in ds.items:
        vp = it.ann.viewpoint
        cad = ds.cad(it.ann.cls)[it.ann.cad_index - 1]
        uv, _ = project_points(cad.vertices, vp.azimuth, vp.elevation, vp.theta, vp.distance, vp.focal, vp.px, vp.py, vp.viewport)
        extreme = np.clip([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()], 1, SMALL.image_size)
        errors.append(it.ann.bbox - extreme)
    errors = np.array(errors)
    assert np.abs(errors).max() < 0.75 and np.abs(errors.mean(0)).max() < 0.15, (errors.min(0), errors.max(0))


def test_keypoints_missing_from_the_objects_cad_model_are_masked_not_zero_targets(tmp_path):
    from .conftest import write_matlab_cad

    anchors = {n: {"location": np.array(loc), "status": 1.0} for n, loc in (("a", [10.0, 12]), ("b", [20.0, 18]), ("c", [15.0, 25]))}
    root = _folder(tmp_path, [_obj(anchors=anchors, cad_index=2.0), _obj(anchors=anchors, cad_index=1.0)])
    tri = {"vertices": np.eye(3), "faces": np.array([[1.0, 2, 3]])}
    write_matlab_cad(root / "CAD" / "mug.mat", "mug", [
        {**tri, "keypoints": {"a": [0.1, 0.0, 0.0], "b": [0.0, 0.1, 0.0], "c": [0.0, 0.0, 0.1]}},
        {**tri, "keypoints": {"a": [0.2, 0.0, 0.0], "b": None, "c": [0.0, 0.0, 0.3]}},
    ])
    _with_images(root)
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.items, 32)
    assert data.names == ["a", "b", "c"]
    # Object 0 uses CAD model 2, which lacks b: b is no target at all (annotated visible or not).
    assert data.canon_valid.tolist() == [[True, False, True], [True, True, True]]
    assert data.visible.tolist() == [[True, False, True], [True, True, True]]
    assert torch.equal(data.canon[0], torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.3]]))
    assert torch.equal(data.canon[1], torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]]))
    assert torch.isfinite(data.canon).all() and torch.isfinite(data.depth).all()


def test_images_are_rgb_imagenet_normalised_and_keypoints_outside_the_crop_are_not_targets(tmp_path):
    # bbox 1..30: crop centre 15.5, side 1.5 * 29 = 43.5; keypoint b at x = 55 is (55 - 15.5) / 43.5 > 0.5 out
    anchors = {"a": {"location": np.array([5.0, 5.0]), "status": 1.0}, "b": {"location": np.array([55.0, 15.0]), "status": 1.0}}
    root = _folder(tmp_path, [_obj(anchors=anchors)])
    _with_images(root)
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.items, 32)
    assert data.visible[0].tolist() == [True, False] and data.kp2d[0, 1].tolist() == [0.0, 0.0]
    bgr = data.raw_crops[0].astype(np.float64) / 255
    for channel, (mean, std) in enumerate([(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]):  # R, G, B
        np.testing.assert_allclose(data.images[0, channel].numpy(), (bgr[..., 2 - channel] - mean) / std, atol=1e-5)


def test_coarse_annotation_scale_is_the_least_squares_fit_of_x_and_flipped_y():
    from dropgrad_viewpoint.data.objectnet3d import _pixel_scale
    from dropgrad_viewpoint.data.records import Viewpoint

    rng = np.random.default_rng(0)
    rotated = rng.normal(size=(5, 3))
    # crop coordinates: x right, y down; CAD y up. A scale 0.37 and a shift, one keypoint masked out (garbage).
    kp2d = 0.37 * rotated[:, :2] * [1.0, -1.0] + [0.1, -0.05]
    kp2d[4] = [9.0, 9.0]
    mask = np.array([True, True, True, True, False])
    coarse = Viewpoint(azimuth=0, elevation=0, theta=0, distance=0, focal=1, px=0, py=0, viewport=2000)
    assert _pixel_scale(coarse, rotated, kp2d, mask, 40.0) == pytest.approx(0.37, rel=1e-12)
    fine = Viewpoint(azimuth=0, elevation=0, theta=0, distance=8, focal=1, px=0, py=0, viewport=2000)
    assert _pixel_scale(fine, rotated, kp2d, mask, 40.0) == pytest.approx(2000 / 8 / 40)


class _Counts:
    """A stand-in data set for make_split: ``usable`` objects per category."""

    def __init__(self, counts):
        self.counts, self.root = counts, "fake"

    @property
    def categories(self):
        return sorted(self.counts)

    def usable(self, cls, mode):
        return [None] * self.counts[cls]


def test_split_needs_shots_plus_one_objects_and_draws_validation_from_the_seed():
    base = _Counts({"a": 5, "b": 6, "c": 9, "d": 7, "e": 8, "f": 6})
    split = make_split(base, _Counts({"n": 6}), ["n"], 2, 5, seed=0)
    assert split.excluded.keys() == {"a"} and sorted(split.train + split.val) == ["b", "c", "d", "e", "f"]
    with pytest.raises(ValueError, match="novel category 'n' has 5 usable"):
        make_split(base, _Counts({"n": 5}), ["n"], 2, 5, seed=0)
    vals = {tuple(make_split(base, _Counts({"n": 6}), ["n"], 2, 5, seed=s).val) for s in range(10)}
    assert len(vals) > 1 and make_split(base, _Counts({"n": 6}), ["n"], 2, 5, seed=0).val == split.val


def test_annotations_mark_hidden_keypoints_truncation_and_coarse_angles(small_synthetic):
    # Each record holds what the generator knew: keypoint status 1 (visible) or 2 (hidden) from
    # the renderer's visibility test, truncated where the box touches the image border, and the
    # coarse angles rounded from the fine ones.
    from dropgrad_viewpoint.data.mat import load_mat
    from dropgrad_viewpoint.data.render import keypoint_visibility
    from dropgrad_viewpoint.data.shapes import make_instance, make_template

    ds = ObjectNet3D(small_synthetic, ["train", "val"])
    n_hidden = 0
    for it in ds.items:
        c = SMALL.category_names().index(it.ann.cls)
        i = int(it.record_path.stem.split("_")[1])
        template = make_template(np.random.default_rng([SMALL.seed, c]), it.ann.cls)
        mesh = make_instance(template, np.random.default_rng([SMALL.seed, c, 1000 + it.ann.cad_index - 1]))
        rng = np.random.default_rng([SMALL.seed, c, 3000 + i])
        rng.integers(SMALL.cad_per_category)
        visible = keypoint_visibility(mesh, _camera(rng, SMALL.image_size), SMALL.image_size)
        status = [it.ann.anchors[n][1] for n in mesh.names]
        assert status == [1 if v else 2 for v in visible]
        n_hidden += int((~np.asarray(visible)).sum())
        x1, y1, x2, y2 = it.ann.bbox
        touches = x1 <= 1 or y1 <= 1 or x2 >= SMALL.image_size or y2 >= SMALL.image_size
        assert it.ann.truncated == touches
        vp = load_mat(it.record_path)["record"]["objects"]
        vp = (vp[0] if isinstance(vp, list) else vp)["viewpoint"]
        assert float(vp["azimuth_coarse"]) == round(float(vp["azimuth"]))
        assert float(vp["elevation_coarse"]) == round(float(vp["elevation"]))
    assert n_hidden > 0


def test_objects_crossing_the_image_border_are_marked_truncated(tmp_path, monkeypatch):
    from dropgrad_viewpoint.data import synthetic

    camera = synthetic._camera
    # the principal point moved to the left border: every object crosses it
    monkeypatch.setattr(synthetic, "_camera", lambda rng, size: {**camera(rng, size), "px": 1.0})
    spec = synthetic.SyntheticSpec(n_train=1, n_val=0, n_novel=1, cad_per_category=1, images_per_category=2, image_size=48)
    ds = ObjectNet3D(synthetic.generate_synthetic(tmp_path / "s", spec), ["train", "val"])
    assert len(ds.items) == 4 and all(it.ann.truncated and it.ann.bbox[0] == 1 for it in ds.items)


def test_categories_get_their_own_colours(tmp_path, monkeypatch):
    from dropgrad_viewpoint.data import synthetic

    seen = {}
    render = synthetic.render_mesh

    def spy(image, mesh, colors, camera, rng):
        seen.setdefault(len(seen), colors.copy())
        return render(image, mesh, colors, camera, rng)

    monkeypatch.setattr(synthetic, "render_mesh", spy)
    spec = synthetic.SyntheticSpec(n_train=2, n_val=0, n_novel=1, cad_per_category=1, images_per_category=1, image_size=32)
    synthetic.generate_synthetic(tmp_path / "s", spec)
    ratio = seen[0] / seen[1]  # each image jitters its palette by at most 20%
    assert len(seen) == 3 and ((ratio < 0.8 / 1.2) | (ratio > 1.2 / 0.8)).any()


def test_instances_are_centred_and_keypoints_sit_on_their_parts():
    from dropgrad_viewpoint.data.shapes import N_PARTS, ShapeTemplate, make_instance

    for body, legs, wheels in (("box", 4, 0), ("cylinder", 0, 4), ("box", 0, 4), ("cylinder", 4, 0)):
        t = ShapeTemplate("c", body, np.array([0.8, 0.6, 0.5]), legs, 0.5, True, wheels, True, N_PARTS)
        m = make_instance(t, np.random.default_rng(1))
        v, kp = m.vertices, dict(zip(m.names, m.keypoints))
        lo, hi = v.min(0), v.max(0)
        np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-12)  # the bounding box's centre at 0
        assert np.linalg.norm(v, axis=1).max() == pytest.approx(0.5)
        assert ((m.keypoints >= lo - 1e-9) & (m.keypoints <= hi + 1e-9)).all()
        # box corners body_<l|r><f|b><b|t>, cylinder points body_<bottom|top>_<side>
        top = [p[2] for n, p in kp.items() if n.startswith("body_top_") or (len(n) == 8 and n.endswith("t"))]
        bottom = [p[2] for n, p in kp.items() if n.startswith("body_bottom_") or (len(n) == 8 and n.endswith("b"))]
        assert len(top) == len(bottom) == 4 and min(top) > max(bottom)
        if body == "box":  # the body's corners are mesh vertices
            for n in (n for n in kp if n.startswith("body_")):
                assert np.min(np.linalg.norm(v - kp[n], axis=1)) < 1e-12, n
        if legs:  # feet on the ground
            assert all(kp[f"leg{i}_foot"][2] == pytest.approx(lo[2]) for i in range(4))
        if wheels:  # hubs at the wheels' outer faces, all at one height
            hubs = np.array([kp[f"wheel{i}_hub"] for i in range(4)])
            body_x = np.mean([p[0] for n, p in kp.items() if n.startswith("body_")])
            assert hubs[0, 0] == pytest.approx(lo[0]) and hubs[2, 0] == pytest.approx(lo[0])  # the handle is at +x
            np.testing.assert_allclose(hubs[[1, 3], 0] - body_x, body_x - hubs[[0, 2], 0])
            assert np.ptp(hubs[:, 2]) < 1e-12
        assert kp["top_tip"][2] == pytest.approx(hi[2]) and kp["handle_tip"][0] == pytest.approx(hi[0])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_part_meshes_face_outwards(axis):
    from dropgrad_viewpoint.data.shapes import _box, _cylinder

    centre = np.array([0.3, -0.2, 0.5])
    for v, f in (_cylinder(centre, 0.2, 0.3, axis=axis), _box(centre, np.array([0.4, 0.3, 0.2]))):
        tri = v[f]
        normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        assert ((normal * (tri.mean(1) - centre)).sum(1) > 0).all()  # counter-clockwise seen from outside


def test_a_tall_box_gets_a_crop_of_one_and_a_half_times_its_height():
    # Box 20 wide, 60 tall: side 1.5 * 60 = 90 (the longer side), centred; the crop's rows read
    # the image's rows centre -+ side / 2 (float ramp image: bilinear reads are exact).
    y, x = np.mgrid[0:120, 0:100].astype(np.float32)
    ramp = np.dstack([x, y, np.zeros_like(x)])
    crop, center, side = crop_object(ramp, np.array([40.0, 20, 60, 80]), 45)
    assert center.tolist() == [50.0, 50.0] and side == 90.0
    i = np.arange(45, dtype=np.float64)
    expect = 50.0 + 90.0 * ((i + 0.5) / 45 - 0.5) - 1.0  # 1-based image point -> array position
    assert np.abs(crop[..., 1] - expect[:, None]).max() < 0.02
    assert np.abs(crop[..., 0] - expect[None, :]).max() < 0.02


def test_objects_whose_visible_keypoints_are_not_the_categorys_are_not_usable(tmp_path):
    # "zzz" is annotated visible but is no keypoint of the category's CAD models (a, b): no target.
    stray = {"zzz": {"location": np.array([5.0, 5.0]), "status": 1.0}}
    ds = ObjectNet3D(_folder(tmp_path, [_obj(), _obj(anchors=stray)]), ["train"])
    assert [it.record_path.stem for it in ds.usable("mug", "train")] == ["im0"]


def test_fine_annotation_scale_is_the_projections_pixels_per_cad_unit_over_the_side():
    from dropgrad_viewpoint.data.objectnet3d import _pixel_scale
    from dropgrad_viewpoint.data.records import Viewpoint

    # Looking straight down (R = I): a CAD step dx at the object moves the projection by
    # (pixels / dx); over the crop side, that is the scale. Focal and viewport both count.
    cam = dict(azimuth=0.0, elevation=90.0, theta=0.0, distance=8.0, focal=2.5, px=0.0, py=0.0, viewport=300.0)
    uv, _ = project_points(np.array([[0.0, 0, 0], [1e-6, 0, 0]]), **cam)
    per_unit = np.linalg.norm(uv[1] - uv[0]) / 1e-6
    vp = Viewpoint(**cam)
    assert _pixel_scale(vp, np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2, bool), 40.0) == pytest.approx(per_unit / 40.0, rel=1e-6)


def test_coarse_scale_is_fitted_on_keypoints_the_objects_cad_model_has(tmp_path):
    from .conftest import write_matlab_cad

    # Coarse annotation (distance 0): the scale is fitted to a and c only; b is annotated visible
    # but missing from the object's CAD model (its zero-filled canon would bias the fit).
    coarse = {"azimuth": 30.0, "elevation": 20.0, "theta": 5.0, "distance": 0.0, "focal": 1.0, "px": 20.0, "py": 20.0,
              "viewport": 100.0}
    anchors = {n: {"location": np.array(loc), "status": 1.0} for n, loc in (("a", [10.0, 12]), ("b", [20.0, 18]), ("c", [15.0, 25]))}
    root = _folder(tmp_path, [_obj(anchors=anchors, viewpoint=coarse)])
    tri = {"vertices": np.eye(3), "faces": np.array([[1.0, 2, 3]])}
    write_matlab_cad(root / "CAD" / "mug.mat", "mug", [{**tri, "keypoints": {"a": [0.2, 0.1, 0.0], "b": None, "c": [0.0, -0.1, 0.3]}}])
    _with_images(root)
    ds = ObjectNet3D(root, ["train"])
    data = CategoryData.build(ds, "mug", ds.items, 32)
    # The least-squares scale by hand, float64, from the annotation itself.
    rot = viewpoint_to_rotation(30.0, 20.0, 5.0)
    pts = np.array([[0.2, 0.1, 0.0], [0.0, -0.1, 0.3]]) @ rot.T
    uv = (np.array([[10.0, 12], [15.0, 25]]) - 15.5) / 43.5  # box 1..30: centre 15.5, side 43.5
    a = pts[:, :2] * [1.0, -1.0]
    a, b = a - a.mean(0), uv - uv.mean(0)
    scale = (a * b).sum() / (a * a).sum()
    assert data.depth_valid[0].all()
    np.testing.assert_allclose(data.depth[0].numpy()[[0, 2]], pts[:, 2] * scale, rtol=1e-5, atol=1e-7)


def test_split_needs_one_training_category_beyond_the_validation_ones():
    base = _Counts({"b": 6, "c": 6})
    with pytest.raises(ValueError, match="2 usable base categories: too few for 2 validation categories and training"):
        make_split(base, _Counts({"n": 6}), ["n"], 2, 5, seed=0)
    assert make_split(base, _Counts({"n": 6}), ["n"], 1, 5, seed=0).train in (["b"], ["c"])
