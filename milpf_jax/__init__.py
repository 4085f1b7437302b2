"""milpf_jax: MIL-PF (Multiple Instance Learning on Precomputed Features) in JAX."""

__version__ = "0.1.0"
