"""Meta-learning methods: MetaView with DropGrad, and pose from its predictions."""

from .metaview import MetaView, Prediction
from .pose import rotations_from_prediction

__all__ = ["MetaView", "Prediction", "rotations_from_prediction"]
