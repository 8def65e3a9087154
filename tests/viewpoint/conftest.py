"""A small synthetic ObjectNet3D-format set shared by this folder's tests."""

import pytest
from dropgrad_viewpoint.data.synthetic import SyntheticSpec, generate_synthetic

SMALL = SyntheticSpec(n_train=3, n_val=1, n_novel=2, cad_per_category=2, images_per_category=14, image_size=64, seed=7)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("vp") / "synth", SMALL)



def write_matlab_cad(path, cls, models):
    """Write ``CAD/<cls>.mat`` with plain scipy, laid out as Pascal3D+'s MATLAB files are: a 1 x N
    struct array with 1-based ``faces``, ``pnames`` a 1 x K cell, one 1 x 3 field per keypoint,
    and ``[]`` (0 x 0) where the instance lacks that keypoint (``None`` in ``models``' entries)."""
    import numpy as np
    import scipy.io

    names = list(models[0]["keypoints"])
    arr = np.empty((1, len(models)), dtype=[(n, object) for n in ("vertices", "faces", "pnames", *names)])
    pnames = np.empty((1, len(names)), dtype=object)
    pnames[0, :] = names
    for i, m in enumerate(models):
        arr[0, i]["vertices"] = np.asarray(m["vertices"], dtype=np.float64)
        arr[0, i]["faces"] = np.asarray(m["faces"], dtype=np.float64)
        arr[0, i]["pnames"] = pnames
        for n in names:
            kp = m["keypoints"][n]
            arr[0, i][n] = np.zeros((0, 0)) if kp is None else np.asarray(kp, dtype=np.float64).reshape(1, 3)
    scipy.io.savemat(str(path), {cls: arr})
    return path
