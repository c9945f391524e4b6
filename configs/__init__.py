"""The configs shipped with diffusion_jax (installed as `diffusion_jax.configs`):
`--config NAME` picks `NAME.py` here; each has a `get_config()`."""
