"""VQ3D stage 1 (Sargent et al., arXiv 2302.06833): image → codes → scene.

For now the stage-1 model is the ViT-VQGAN autoencoder with its 2D decoder
(`model.decoder = "vit2d"`); the contracted-triplane NeRF decoder, depth loss
and novel-view discriminator extend this config in the next issue.
Presets: tiny | imagenet256. Usage: --config=configs/vq3d_stage1.py:tiny
"""

import ml_collections

from configs import vit_vqgan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = vit_vqgan.get_config(arg)
    c.task = "vq3d_stage1"
    return c
