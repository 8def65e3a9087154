"""Few-shot viewpoint estimation (MetaView) with DropGrad on ObjectNet3D.

Skeleton: its own issue fills this package in.
"""

__version__ = "0.1.0"
