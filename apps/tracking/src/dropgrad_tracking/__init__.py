"""Online object tracking (MetaSDNet, MetaCREST) meta-trained with DropGrad; OTB2015 one-pass evaluation.

Skeleton: its own issue fills this package in.
"""

__version__ = "0.1.0"
