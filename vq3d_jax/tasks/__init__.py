"""Task registry: `config.task` → the class that trains it (imported lazily)."""

import importlib

_TASKS = {
    "vit_vqgan": "vq3d_jax.tasks.vit_vqgan:ViTVQGANTask",
    # model.decoder picks the NeRF task or the 2D autoencoder.
    "vq3d_stage1": "vq3d_jax.tasks.vq3d_stage1:make_task",
    "vq3d_stage2": "vq3d_jax.tasks.vq3d_stage2:VQ3DStage2Task",
    # 3D-aware GANs; model.head picks the generator (GMPI).
    "gan": "vq3d_jax.tasks.gan_task:GANTask",
}


def get_task(config):
    if config.task not in _TASKS:
        raise ValueError(f"config.task={config.task!r} is not one of {sorted(_TASKS)}.")
    module, name = _TASKS[config.task].split(":")
    return getattr(importlib.import_module(module), name)(config)
