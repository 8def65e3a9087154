#!/usr/bin/env python
"""Build episode caches (decoded, resized uint8 images in a memory-mapped file per split).

Same as the ``fewshot-cache`` console script; works from a bare checkout too. Examples::

    python tools/build_episode_cache.py --dataset miniimagenet --data-root /data/mini --image-size 84 224 --out cache/
    python tools/build_episode_cache.py --dataset cub --data-root /data/CUB_200_2011 --out cache/
    python tools/build_episode_cache.py --dataset omniglot --data-root /data/omniglot --option protocol=background --out cache/
    fewshot-train --dataset miniimagenet --cache cache/ --augment ...

See apps/fewshot/DATA.md, "Episode cache".
"""

import sys
from pathlib import Path

try:
    from dropgrad_fewshot.cache_cli import main
except ImportError:  # not pip-installed: use the checkout this script lives in
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root / "packages" / "core" / "src"), str(root / "apps" / "fewshot" / "src")]
    from dropgrad_fewshot.cache_cli import main

if __name__ == "__main__":
    sys.exit(main())
