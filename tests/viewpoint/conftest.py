"""A small synthetic ObjectNet3D-format set shared by this folder's tests."""

import pytest
from dropgrad_viewpoint.data.synthetic import SyntheticSpec, generate_synthetic

SMALL = SyntheticSpec(n_train=3, n_val=1, n_novel=2, cad_per_category=2, images_per_category=14, image_size=64, seed=7)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("vp") / "synth", SMALL)

