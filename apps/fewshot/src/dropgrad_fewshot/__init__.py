"""Few-shot image classification with MAML, MetaSGD, MetaSGD* and MAML++ regularised by DropGrad.

Sub-packages: ``data`` (Omniglot, mini-ImageNet, CUB-200-2011 and the procedural glyphs;
episodes), ``models`` (Conv4, CloserLook ResNet-10/18, class activation maps, MetaSGD*
pre-training); modules ``config`` (the run's options), ``methods`` (the meta-learners),
``run`` (train, validate, test), ``testing`` (``fewshot-test``), ``sweep`` (``fewshot-sweep``)
and ``cli``.
"""

__version__ = "0.1.0"
