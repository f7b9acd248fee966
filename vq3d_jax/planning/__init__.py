"""The pieces of `--mode=plan` (vq3d_jax/plan.py): per-device bytes and activations of a
step on an abstract mesh (`memory`), and the accelerators it is held against with the
step time they predict and what would fit (`roofline`)."""
