"""Few-shot viewpoint estimation (MetaView) with DropGrad on ObjectNet3D.

Modules: :mod:`.geometry` (Pascal3D+/ObjectNet3D rotations, errors, Procrustes, PnP),
:mod:`.data` (``.mat`` reading, ObjectNet3D layout, the procedural synthetic set),
:mod:`.models` (trunks and the per-keypoint viewpoint module), :mod:`.methods` (MetaView's
meta-Siamese inner loop with DropGrad, pose from predictions), :mod:`.evaluation`,
:mod:`.pipeline` and :mod:`.cli` (``viewpoint-train``, ``viewpoint-eval``).

>>> from dropgrad_viewpoint.geometry import rotation_error_deg, viewpoint_to_rotation
>>> round(float(rotation_error_deg(viewpoint_to_rotation(10, 20, 0), viewpoint_to_rotation(10, 20, 45))), 6)
45.0
"""

__version__ = "0.1.0"
