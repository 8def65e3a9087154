"""Bad ObjectNet3D image sets and CAD files: one error naming the file (and line or field)."""

import numpy as np
import pytest
from dropgrad_viewpoint.data.mat import MatError, save_mat
from dropgrad_viewpoint.data.objectnet3d import read_image_set
from dropgrad_viewpoint.data.records import load_cad


def test_image_set_lists_an_id_twice(tmp_path):
    (tmp_path / "Image_sets").mkdir()
    (tmp_path / "Image_sets" / "train.txt").write_text("a_0001\na_0002\n\na_0001\n")
    with pytest.raises(ValueError, match=r"train\.txt, line 4: a_0001 again \(already on line 1\)"):
        read_image_set(tmp_path, "train")


def test_image_set_not_utf8(tmp_path):
    (tmp_path / "Image_sets").mkdir()
    (tmp_path / "Image_sets" / "train.txt").write_bytes(b"a_0001\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"image set .*train\.txt: byte 10 is not UTF-8"):
        read_image_set(tmp_path, "train")


def test_image_set_good(tmp_path):
    (tmp_path / "Image_sets").mkdir()
    (tmp_path / "Image_sets" / "val.txt").write_text("b_1\n\nb_2\n")
    assert read_image_set(tmp_path, "val") == ["b_1", "b_2"]


@pytest.mark.parametrize("field", ["vertices", "faces"])
def test_cad_arrays_must_be_n_by_3(tmp_path, field):
    model = {"vertices": np.zeros((4, 3)), "faces": np.array([[1.0, 2, 3]]), "pnames": ["tip"], "tip": np.array([0.0, 0, 1])}
    model[field] = np.zeros((5, 2))
    path = save_mat(tmp_path / "mug.mat", {"mug": [model]})
    with pytest.raises(MatError, match=rf"mug\.mat: field mug\(1\)\.{field} must be an N x 3 array, got shape \(5, 2\)"):
        load_cad(path)


def test_category_lists_name_a_category_twice_or_are_not_utf8(tmp_path):
    from dropgrad_viewpoint.config import ViewpointConfig
    from dropgrad_viewpoint.pipeline import load_data

    sets = tmp_path / "Image_sets"
    sets.mkdir()
    cfg = ViewpointConfig(dataset="objectnet3d", data_root=str(tmp_path), novel_categories="bed,sofa,bed")
    with pytest.raises(ValueError, match="--novel-categories names bed twice"):
        load_data(cfg, log=lambda line: None)
    cfg = ViewpointConfig(dataset="objectnet3d", data_root=str(tmp_path))
    (sets / "novel_categories.txt").write_text("bed\nsofa\nbed\n")
    with pytest.raises(ValueError, match=r"novel_categories\.txt names bed twice"):
        load_data(cfg, log=lambda line: None)
    (sets / "novel_categories.txt").write_bytes(b"bed\nsof\xe9\n")
    with pytest.raises(ValueError, match=r"novel_categories\.txt is not a text file \(byte 7"):
        load_data(cfg, log=lambda line: None)


def test_viewpoint_train_and_eval_on_another_apps_run_folder_are_one_line(fewshot_run_folder, capsys):
    from dropgrad_viewpoint.cli import main_eval, main_train

    run = fewshot_run_folder
    for main, argv in ((main_train, ["--out", str(run), "--resume"]), (main_eval, [str(run)])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        assert f"error: {run} is another app's run folder, not a viewpoint-train run" in err


def test_viewpoint_train_and_eval_name_the_app_of_a_marked_run_folder(marked_fewshot_run_folder, capsys):
    from dropgrad_viewpoint.cli import main_eval, main_train

    run = marked_fewshot_run_folder
    for main, argv in ((main_train, ["--out", str(run), "--resume"]), (main_eval, [str(run)])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1, err
        assert (f"error: {run} is a run folder of dropgrad-fewshot (fewshot-train), not a viewpoint-train run; "
                "open it with fewshot-train --resume or fewshot-test; expected a viewpoint-train run folder") in err
