"""vq3d_jax: 3D-aware generative image models in JAX/Flax."""
