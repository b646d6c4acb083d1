"""Subspace projections as optax transforms (Sculpting Subspaces / OSFT; usable without jaxcl).

A leaf ``W: [..., d_in, d_out]`` (``...`` = any leading axes, e.g. the stacked layers ``L``;
forward ``x @ W``) gets a ``SubspaceBasis(u, v)``: one projector per side, ``u`` acting on the
input side (``d_in``), ``v`` on the output side (``d_out``). A side is given either as

- ``Preserve(Q [..., d, k], mask [..., k])``: the directions to keep fixed; projector
  ``I − Q diag(mask) Qᵀ``; or
- ``Free(Q [..., d, c], mask [..., c])``: their orthogonal complement given directly (the
  directions allowed to change); projector ``Q diag(mask) Qᵀ``.

Both describe the same ``P⊥``; ``Free`` is cheaper when more than half of the side is preserved
(OSFT keeps ρ ≈ 0.8 of the rank). The 0/1 masks let one stacked leaf keep a different rank per
layer inside fixed-width arrays. With ``P_U``, ``P_V`` the projectors onto the PRESERVED
directions, a gradient or update ``G`` (same shape as ``W``) is mapped to

    form="two_sided" (default):  Π(G) = (I − P_U) G (I − P_V)
        what every released OSFT code does (research repo, mini_trainer, PEFT OSF) once written
        for a dense ``W`` (``sculpting_osf.md`` §1.3): then ``U_kᵀ Π(G) = 0`` and
        ``Π(G) V_k = 0``: ``W``'s action on the preserved input directions and its output
        along the preserved output directions never change;
    form="high_high" (the paper's formula):  Π(G) = G − P_U G P_V
        removes only the doubly projected block, so only ``U_kᵀ Π(G) V_k = 0`` holds.

A leaf with one side only (the other None) is projected on that side alone: the form of OSFT's
factor gradients (``dU_low``, ``dV_low``). Leaves without a basis pass through unchanged, and
every leaf keeps its full shape, so any optax optimizer can follow in a chain (unlike GaLore,
which runs its optimizer on ``r×n`` proxies). Arithmetic is float32 at ``Precision.HIGHEST``
(``kernels.projection`` for ``Preserve`` sides), cast back to the leaf's dtype. Cost per
``m×n`` matrix: ``8·m·n·k`` flops with two ``Preserve`` sides; a ``Free`` side is applied first
and reduces the matrix to ``c×n``, e.g. ``4·m·n·c + 4·c·n·k`` for (Free, Preserve).

The bases live in the transform's *state* (copied there by ``init``), never in its closure, so
a jit-compiled step takes them as inputs: a new task's bases do not bake new constants into
the program. ``project_optimizer(opt, bases)`` acts as
``optax.chain(project_out_subspaces(bases), opt, project_out_subspaces(bases))``: the second
projection acts on the FINAL update (after Adam's per-element scaling and decoupled weight
decay, which would otherwise leak back into the preserved subspace), so
``U_kᵀ (W_T − W_0) = 0`` and ``(W_T − W_0) V_k = 0`` hold to float precision over a whole task;
the first makes the moments, and any global-norm clipping, see projected gradients (spec §2.2:
"put the projection first").

Example (no other jaxcl code)::

    bases = {"w": svd_bases(params["w"], ranks=4)}           # preserve the top-4 singular pairs
    tx = project_optimizer(optax.adamw(1e-3, weight_decay=0.01), bases)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)          # U_kᵀ updates = 0, updates V_k = 0

References:
  Nayak et al., "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual
  Learning", arXiv 2504.07097 (ICLR 2026 as OSFT); spec ``sculpting_osf.md`` §1.3, §2.2, §2.4.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcl.core import path_of
from kernels.projection import project_out_left, rank_mask, thin_svd

FORMS = ("two_sided", "high_high")
_mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


class Preserve(NamedTuple):
    """Directions of one side kept fixed: projector ``I − Q diag(mask) Qᵀ``.

    Attributes:
      basis: ``[..., d, k]`` orthonormal columns.
      mask: ``[..., k]`` bool/0-1 active columns (None: all).
    """

    basis: jax.Array
    mask: jax.Array | None = None


class Free(NamedTuple):
    """The complement of the preserved directions of one side: projector ``Q diag(mask) Qᵀ``.

    Attributes:
      basis: ``[..., d, c]`` orthonormal columns spanning the directions allowed to change.
      mask: ``[..., c]`` bool/0-1 active columns (None: all).
    """

    basis: jax.Array
    mask: jax.Array | None = None


Side = Preserve | Free


class SubspaceBasis(NamedTuple):
    """The projection of one leaf ``W: [..., d_in, d_out]``: ``u`` on ``d_in``, ``v`` on ``d_out``."""

    u: Side | None = None
    v: Side | None = None


class SubspaceProjectionState(NamedTuple):
    """``bases`` has the params' tree structure; each leaf's entry is a ``SubspaceBasis`` or None."""

    bases: Any


# ----------------------------------------------------------------------------- bases


def svd_bases(
    w: jax.Array, ranks: int | jax.Array, k_max: int | None = None, complement: bool | None = None,
    usv: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> SubspaceBasis:
    """A ``SubspaceBasis`` preserving the top ``ranks`` singular pairs of ``w: [..., d_in, d_out]``.

    Thin float32 SVD per matrix (``kernels.thin_svd``, vmapped over the leading axes),
    ``W = U diag(S) Vᵀ`` with ``U: [d_in, r]``, ``V: [d_out, r]``, ``r = min(d_in, d_out)``.
    A side is ``Preserve(U[..., :k_max], j < k)`` or, where the thin SVD spans the whole side
    (``d == r``), possibly ``Free(U[..., k_min:], k_min + j ≥ k)`` (the trailing singular
    vectors): with ``complement=None`` the narrower of the two is chosen per side.

    Args:
      w: the weight, ``[..., d_in, d_out]``.
      ranks: preserved rank, an int or an int array broadcastable to ``w.shape[:-2]`` (per layer);
        concrete (this runs outside jit).
      k_max: ``Preserve`` columns (static); default ``max(ranks)`` (at least 1).
      complement: True: ``Free`` wherever ``d == r``; False: ``Preserve`` sides only (the
        preserved ``U_k``, ``V_k`` themselves); None: the narrower one per side.
      usv: ``stacked_svd(w)`` when the caller has it already (OSFT's factorised form needs the
        singular values too); computed here otherwise.

    Returns:
      The basis, float32 columns and bool masks.

    Raises:
      ValueError: ``w`` is not at least 2-D, a rank is outside ``[0, r]`` or ``k_max`` outside
        ``[max(ranks), r]``.
    """
    if w.ndim < 2:
        raise ValueError(f"svd_bases needs a matrix [..., d_in, d_out], got shape {w.shape}")
    *lead, d_in, d_out = w.shape
    r = min(d_in, d_out)
    ranks_arr = jnp.broadcast_to(jnp.asarray(ranks, jnp.int32), tuple(lead))
    lo, hi = int(jnp.min(ranks_arr)), int(jnp.max(ranks_arr))
    if lo < 0 or hi > r:
        raise ValueError(f"preserved ranks must lie in [0, {r}] for a [{d_in}, {d_out}] matrix, got [{lo}, {hi}]")
    k_max = max(hi, 1) if k_max is None else int(k_max)
    if not hi <= k_max <= r or k_max < 1:
        raise ValueError(f"k_max={k_max} must lie in [max(ranks)={hi}, {r}] (and be ≥ 1)")
    u, _, v = stacked_svd(w) if usv is None else usv
    sides = []
    for vecs, d in ((u, d_in), (v, d_out)):
        # per-layer slicing (project_out_subspaces) makes the cost ~ the summed active width
        use_free = d == r and (complement or (complement is None and int(jnp.sum(r - ranks_arr)) < int(jnp.sum(ranks_arr))))
        if use_free and lo < r:
            sides.append(Free(vecs[..., lo:], lo + jnp.arange(r - lo) >= ranks_arr[..., None]))
        elif use_free:  # every direction preserved: nothing may change on this side
            sides.append(Free(vecs[..., :1], jnp.zeros((*lead, 1), bool)))
        else:
            sides.append(Preserve(vecs[..., :k_max], rank_mask(ranks_arr, k_max)))
    return SubspaceBasis(*sides)


@jax.jit
def stacked_svd(w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin fp32 SVD of every matrix of ``w: [..., d_in, d_out]``, ``w = U diag(S) Vᵀ``.

    Returns ``U: [..., d_in, r]``, ``S: [..., r]`` (descending), ``V: [..., d_out, r]`` with
    ``r = min(d_in, d_out)`` (``kernels.thin_svd`` vmapped over the leading axes).
    """
    svd = thin_svd
    for _ in range(w.ndim - 2):
        svd = jax.vmap(svd)
    u, s, vt = svd(w)
    return u, s, jnp.swapaxes(vt, -1, -2)


def basis_as_dict(basis: SubspaceBasis) -> dict:
    """Plain nested dict of arrays (orbax-friendly): ``{"u": {"preserve"|"free": Q, "mask": m}, ...}``."""
    out = {}
    for name, side in (("u", basis.u), ("v", basis.v)):
        if side is not None:
            kind = "free" if isinstance(side, Free) else "preserve"
            out[name] = {kind: side.basis, **({} if side.mask is None else {"mask": side.mask})}
    return out


def basis_from_dict(tree: Mapping) -> SubspaceBasis:
    """Inverse of ``basis_as_dict``."""
    sides = []
    for name in ("u", "v"):
        d = tree.get(name)
        sides.append(None if d is None else
                     Free(d["free"], d.get("mask")) if "free" in d else Preserve(d["preserve"], d.get("mask")))
    return SubspaceBasis(*sides)


# ----------------------------------------------------------------------------- projection


def project_matrix(
    g: jax.Array, basis: SubspaceBasis | None, form: str = "two_sided", plan: tuple | None = None
) -> jax.Array:
    """``Π(G)`` of the module docstring for one leaf ``g: [..., d_in, d_out]`` (same shape out).

    ``plan`` (``layer_plan(basis)``, static) projects layer by layer through the active columns only.
    """
    if basis is None or (basis.u is None and basis.v is None):
        return g
    if plan is not None:
        return _project_by_layer(g, basis, plan, form)
    fn = functools.partial(_project_2d, form=form)
    for _ in range(g.ndim - 2):
        fn = jax.vmap(fn)
    return fn(g, basis)


def _active_range(mask_row: np.ndarray) -> tuple[int, int] | None:
    """``(start, stop)`` when the active entries of a 1-D 0/1 mask are one contiguous run, else None."""
    idx = np.flatnonzero(mask_row)
    if idx.size == 0:
        return (0, 0)
    if np.any(mask_row[idx] != 1) or idx[-1] - idx[0] + 1 != idx.size:
        return None
    return int(idx[0]), int(idx[-1]) + 1


def _side_ranges(side: Side | None, num_layers: int) -> list[tuple[int, int] | None] | None:
    """Per layer, the static column range of ``side`` that is active, or None (no slicing possible)."""
    if side is None:
        return [None] * num_layers
    width = side.basis.shape[-1]
    if side.mask is None:
        return [(0, width)] * num_layers
    try:
        mask = np.asarray(side.mask, np.float32).reshape(num_layers, width)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None  # masks only known inside a trace: keep the masked full-width form
    ranges = [_active_range(row) for row in mask]
    return None if any(r is None for r in ranges) else ranges


def layer_plan(basis: SubspaceBasis | None) -> tuple | None:
    """Static per-layer column ranges ``((u_range, v_range), ...)`` of a basis with concrete masks.

    A stacked leaf's bases have one width per side for all layers (the widest layer's), with a
    mask marking each layer's active columns. Given the plan, ``project_matrix`` projects layer
    by layer through exactly the active columns, so the cost is ``Σ_l`` of the layers' own widths
    instead of ``L ×`` the widest (OSFT's adaptive ranks differ a lot between layers: on
    SmolLM2 the first layer preserves ~14% and the others ~80%). None when the basis has more
    than one leading axis, traced masks, or masks that are not one contiguous run per layer
    (e.g. fractional weights); the masked full-width form is used then.
    """
    if basis is None or (basis.u is None and basis.v is None):
        return None
    some = basis.u if basis.u is not None else basis.v
    lead = some.basis.shape[:-2]
    if len(lead) > 1:
        return None
    num_layers = lead[0] if lead else 1
    u, v = _side_ranges(basis.u, num_layers), _side_ranges(basis.v, num_layers)
    if u is None or v is None:
        return None
    return tuple(zip(u, v))


def _slice_side(side: Side | None, layer: int | None, cols: tuple[int, int] | None) -> Side | None:
    if side is None:
        return None
    q = side.basis if layer is None else side.basis[layer]
    start, stop = cols  # an empty range is a zero-width basis: Preserve → identity, Free → zero projector
    return type(side)(q[:, start:stop], None)


def _project_by_layer(g: jax.Array, basis: SubspaceBasis, plan: tuple, form: str) -> jax.Array:
    """``Π(G)`` layer by layer through each layer's active columns only (``layer_plan``)."""
    if g.ndim == 2:
        (u_cols, v_cols), = plan
        return _project_2d(g, SubspaceBasis(_slice_side(basis.u, None, u_cols), _slice_side(basis.v, None, v_cols)), form)
    return jnp.stack([
        _project_2d(g[l], SubspaceBasis(_slice_side(basis.u, l, u_cols), _slice_side(basis.v, l, v_cols)), form)
        for l, (u_cols, v_cols) in enumerate(plan)
    ])


def _weights(mask: jax.Array | None) -> jax.Array | float:
    return 1.0 if mask is None else jnp.asarray(mask).astype(jnp.float32)


def _left(x: jax.Array, side: Side | None) -> jax.Array:
    """The side's complement projector applied to the rows of ``x: [d, n]`` (float32)."""
    if side is None:
        return x
    if isinstance(side, Preserve):
        return project_out_left(x, side.basis.astype(jnp.float32), side.mask)
    q = side.basis.astype(jnp.float32)
    return _mm(q, _mm(q.T, x) * jnp.reshape(_weights(side.mask), (-1, 1)))


def _right(x: jax.Array, side: Side | None) -> jax.Array:
    """The side's complement projector applied to the columns of ``x: [m, d]`` (float32)."""
    return _left(x.T, side).T  # XLA folds the transposes into the dot dimension numbers


def _project_2d(g: jax.Array, basis: SubspaceBasis, form: str) -> jax.Array:
    u, v = basis
    g32 = g.astype(jnp.float32)
    if form == "high_high":  # G − P_U G P_V with P = Q diag(mask) Qᵀ the preserved projectors
        block = g32 if u is None else g32 - _left(g32, u)
        block = block if v is None else block - _right(block, v)
        return (g32 - block).astype(g.dtype)
    if isinstance(u, Free):  # reduce to the c×n core first, then expand
        q = u.basis.astype(jnp.float32)
        core = _mm(q.T, g32) * jnp.reshape(_weights(u.mask), (-1, 1))
        return _mm(q, _right(core, v)).astype(g.dtype)
    if isinstance(v, Free):
        p = v.basis.astype(jnp.float32)
        core = _mm(g32, p) * jnp.reshape(_weights(v.mask), (1, -1))
        return _mm(_left(core, u), p.T).astype(g.dtype)
    return _right(_left(g32, u), v).astype(g.dtype)


def _check_basis(path: str, leaf: jax.Array, basis: SubspaceBasis) -> None:
    if leaf.ndim < 2:
        raise ValueError(f"basis given for '{path}', which is not a matrix (shape {leaf.shape})")
    *lead, d_in, d_out = leaf.shape
    for name, side, dim in (("u", basis.u, d_in), ("v", basis.v, d_out)):
        if side is None:
            continue
        if not isinstance(side, (Preserve, Free)):
            raise ValueError(f"'{path}': basis.{name} must be Preserve, Free or None, got {type(side).__name__}")
        q = side.basis
        if tuple(q.shape[:-2]) != tuple(lead) or q.shape[-2] != dim:
            raise ValueError(f"'{path}' {tuple(leaf.shape)}: basis.{name} has shape {tuple(q.shape)}, "
                             f"expected {(*lead, dim, 'k')}")
        if side.mask is not None and tuple(side.mask.shape) != (*lead, q.shape[-1]):
            raise ValueError(f"'{path}': basis.{name}.mask has shape {tuple(side.mask.shape)}, "
                             f"expected {(*lead, q.shape[-1])}")


def _copy_side(side: Side | None) -> Side | None:
    """A copy in float32 (a train step donates its optimizer state: it must not alias the caller's arrays)."""
    if side is None:
        return None
    mask = None if side.mask is None else jnp.array(side.mask, copy=True)
    return type(side)(jnp.array(side.basis, jnp.float32, copy=True), mask)


def project_out_subspaces(
    bases: Mapping[str, SubspaceBasis], form: str = "two_sided"
) -> optax.GradientTransformation:
    """An optax transform applying ``Π`` (module docstring) to the leaves named in ``bases``.

    Args:
      bases: ``{leaf path: SubspaceBasis}``; a path joins the dict keys / sequence indices of the
        leaf in the tree the transform sees, with "/" (``"layers/q_proj"``,
        ``"full/layers/q_proj"``). ``init`` copies the arrays into the state (float32 bases).
      form: ``"two_sided"`` (the official codes' equivalent, default) or ``"high_high"`` (paper).

    Returns:
      A ``GradientTransformation`` whose state is ``SubspaceProjectionState``; ``update`` keeps
      every leaf's shape and dtype and passes leaves without a basis through.

    Raises:
      ValueError: at construction for an unknown form; in ``init`` for a path that names no leaf
        or a basis that does not fit its leaf (the message names the path).
    """
    if form not in FORMS:
        raise ValueError(f"unknown projection form {form!r}; expected one of {FORMS}")
    bases = dict(bases)
    plans = {path: layer_plan(basis) for path, basis in bases.items()}  # static, from the concrete masks

    def init(params):
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [path_of(kp) for kp, _ in flat]
        missing = sorted(set(bases) - set(paths))
        if missing:
            raise ValueError(f"project_out_subspaces: bases for {missing} match no leaf; leaves: {paths}")
        state_leaves = []
        for path, (_, leaf) in zip(paths, flat):
            basis = bases.get(path)
            if basis is not None:
                _check_basis(path, leaf, basis)
                basis = SubspaceBasis(*(_copy_side(side) for side in basis))
            state_leaves.append(basis)
        return SubspaceProjectionState(bases=jax.tree_util.tree_unflatten(treedef, state_leaves))

    def update(updates, state, params=None):
        del params
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat_bases = treedef.flatten_up_to(state.bases)
        out = [project_matrix(g, b, form, plans.get(path_of(kp))) for (kp, g), b in zip(flat, flat_bases)]
        return jax.tree_util.tree_unflatten(treedef, out), state

    return optax.GradientTransformation(init, update)


class ProjectedOptimizerState(NamedTuple):
    """State of ``project_optimizer``: the bases (stored once) and the wrapped optimizer's state."""

    projection: SubspaceProjectionState
    inner: Any


def project_optimizer(
    optimizer: optax.GradientTransformation,
    bases: Mapping[str, SubspaceBasis],
    form: str = "two_sided",
    project_gradients: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` whose final update lies in the complement of ``bases`` (module docstring).

    Same updates as ``optax.chain(project_out_subspaces(bases), optimizer,
    project_out_subspaces(bases))`` but the bases are held once in the state. With
    ``project_gradients=False`` only the final update is projected (the optimizer's moments and
    any clipping then also see the gradient's preserved-subspace part). Extra keyword
    arguments of ``update`` are passed on to ``optimizer``.
    """
    projection = project_out_subspaces(bases, form)
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return ProjectedOptimizerState(projection.init(params), inner.init(params))

    def update(updates, state, params=None, **extra_args):
        if project_gradients:
            updates, _ = projection.update(updates, state.projection)
        updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
        updates, _ = projection.update(updates, state.projection)
        return updates, ProjectedOptimizerState(state.projection, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)
