"""Few-shot image classification with MAML, MetaSGD, MetaSGD* and MAML++ regularised by DropGrad.

Skeleton: its own issue fills this package in.
"""

__version__ = "0.1.0"
