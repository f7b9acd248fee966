"""GMNR (Kumar et al., arXiv 2304.01172): GMPI with α-guided view-dependent colour
(models/gmnr.py) and the view-consistency loss; the same head, task and recipe as
configs/gmpi.py, with these switched on.

Presets: as configs/gmpi.py. Usage:
  --config=configs/gmnr.py:tiny
Every value the paper does not publish is tagged [choice].
"""

import ml_collections

from configs import gmpi

PRESETS = gmpi.PRESETS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = gmpi.get_config(arg)
    c.model.view_dependence.fraction = 0.6  # GMNR: 60 % of each plane's visible pixels
    c.loss.view_consistency = 1.0  # GMNR's code adds it to the G loss with weight 1
    if c.preset == "tiny":
        # [choice] CPU: narrower MLPs (GMNR's 784 / 64).
        c.model.view_dependence.update(position_width=64, view_width=16)
    return c
