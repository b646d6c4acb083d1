"""optax ``GradientTransformation``s of the CL methods, usable on their own in any optax loop.

- :mod:`jaxcl.optim.subspace`: keep updates out of preserved subspaces (Sculpting Subspaces /
  OSFT): ``stacked_svd``, ``svd_bases``, ``project_out_subspaces``, ``project_optimizer``; per-side bases
  ``Preserve`` / ``Free`` in a ``SubspaceBasis``.
"""

from jaxcl.optim.subspace import (
    FORMS,
    Free,
    Preserve,
    ProjectedOptimizerState,
    SubspaceBasis,
    SubspaceProjectionState,
    basis_as_dict,
    basis_from_dict,
    layer_plan,
    project_matrix,
    project_optimizer,
    project_out_subspaces,
    stacked_svd,
    svd_bases,
)

__all__ = [
    "FORMS",
    "Free",
    "Preserve",
    "ProjectedOptimizerState",
    "SubspaceBasis",
    "SubspaceProjectionState",
    "basis_as_dict",
    "basis_from_dict",
    "layer_plan",
    "project_matrix",
    "project_optimizer",
    "project_out_subspaces",
    "stacked_svd",
    "svd_bases",
]
