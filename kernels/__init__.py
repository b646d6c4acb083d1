"""Manifold and subspace ops of the continual-learning methods, in plain JAX.

Each op ships with a reference implementation (its test oracle), works on a
single matrix (use ``jax.vmap`` for a leading layer axis) and is jit-able on
CPU/GPU/TPU. Conventions: weights are ``[d_in, d_out]`` (forward ``x @ W``),
LoRA is ``scale * a @ b`` with ``a: [d_in, r]``, ``b: [r, d_out]``.

- :mod:`kernels.hadamard_exp`: ``W ⊙ exp(ΔW)`` and its Taylor truncations (LieRA/OLieRA).
- :mod:`kernels.lowrank_expm`: ``exp(S)`` / Cayley of a low-rank skew ``S`` (rotations).
- :mod:`kernels.projection`: two-sided subspace projections, SVD/QR helpers (OSFT).
- :mod:`kernels.jumprelu`: the symmetric JumpReLU gate of JumpLoRA with its pseudo-derivative.
"""

from kernels.hadamard_exp import hadamard_exp, hadamard_exp_lowrank, hadamard_exp_reference, taylor_exp
from kernels.jumprelu import DEFAULT_BANDWIDTH, gate, gate_reference_numpy
from kernels.lowrank_expm import (
    apply_cayley_lowrank,
    apply_skew_lowrank_expm,
    cayley_lowrank,
    cayley_reference,
    phi1,
    small_inverse,
    skew_from_lowrank,
    skew_lowrank_expm,
    skew_lowrank_expm_reference,
)
from kernels.projection import (
    orthonormal_basis,
    project_out_left,
    project_out_right,
    project_out_two_sided,
    rank_mask,
    thin_svd,
)

__all__ = [
    "DEFAULT_BANDWIDTH",
    "apply_cayley_lowrank",
    "apply_skew_lowrank_expm",
    "cayley_lowrank",
    "cayley_reference",
    "gate",
    "gate_reference_numpy",
    "hadamard_exp",
    "hadamard_exp_lowrank",
    "hadamard_exp_reference",
    "orthonormal_basis",
    "phi1",
    "small_inverse",
    "project_out_left",
    "project_out_right",
    "project_out_two_sided",
    "rank_mask",
    "skew_from_lowrank",
    "skew_lowrank_expm",
    "skew_lowrank_expm_reference",
    "taylor_exp",
    "thin_svd",
]
