"""Synaptic learning rules that paint a matrix one rank at a time.

N independent matrices (batch x channels) are written in T steps, starting from
W_0 = 0. Inputs arrive already activated:

    keys    (N, T, d_key)    phi(k_t), softmax over d_key
    values  (N, T, d_value)  v_t
    lrs     (N, T)           sigma(beta_t)

Rules (s_t = sigma(beta_t), k_t = phi(k_t), (x) the outer product):

    delta     W_t = W_{t-1} + s_t (v_t - W_{t-1} k_t) (x) k_t           Eq. 2 / Eq. 9 of the paper
    additive  W_t = W_{t-1} + v_t (x) k_t                               linear Transformer (Katharopoulos
                                                                        et al., 2020); lrs are unused
    oja       W_t = W_{t-1} + s_t v_t (x) (k_t - W_{t-1}^T v_t)         Oja (1982) in the fast-weight form of
                                                                        Irie, Faccio & Schmidhuber (2022),
                                                                        "Neural Differential Equations for
                                                                        Learning to Program Neural Nets Through
                                                                        Continuous Learning Rules", NeurIPS.

    oja-softmax  W_t = W_{t-1} + s_t v_t (x) softmax(k_t - W_{t-1}^T v_t)  the authors' code (IDSIA/fpainter,
                                                                        its only Oja painter, lstm_oja_split_v2):
                                                                        the corrected key is softmaxed again

``oja`` is the rule as published; ``oja-softmax`` is what the paper trained ("with the Oja rule, we did not
manage to train any reasonable model on CelebA", Sec. 4.3, refers to it). The second softmax makes the
update non-linear in W, so oja-softmax has no parallel form: ``apply_rule`` runs its loop.

The parallel form. Every rule writes W_T = sum_t a_t (x) b_t. For delta, a_t = u_t and b_t = k_t with

    u_t = s_t (v_t - W_{t-1} k_t) = s_t v_t - s_t sum_{s<t} (k_s . k_t) u_s,

i.e. (I + diag(s) tril(K K^T, -1)) U = diag(s) V: a unit lower-triangular T x T system, one
triangular solve for all t (the idea behind chunked DeltaNet training). Oja is the same system
with the roles of keys and values swapped: a_t = v_t, b_t = w_t with
(I + diag(s) tril(V V^T, -1)) W = diag(s) K. Additive is a single matrix product V^T K.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from fpa_core.threads import one_cpu_thread

RULES = ("delta", "additive", "oja", "oja-softmax")
PARALLEL_RULES = ("delta", "additive", "oja")  # the rules with a parallel form


def apply_rule(
    rule: str,
    keys: Tensor,
    values: Tensor,
    lrs: Tensor,
    parallel: bool = True,
    return_steps: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Paint N matrices with a learning rule.

    Returns W_T (N, d_value, d_key). With ``return_steps=True`` returns
    ``(W_T, updates, canvases)``; updates[:, t] is the rank-1 term of step t+1 and
    canvases[:, t] = W_{t+1}, both (N, T, d_value, d_key).

    ``parallel=False`` runs the step-by-step loop (the reference); ``parallel=True``
    uses one triangular solve (delta, oja) or one matrix product (additive); oja-softmax always loops.
    The rule is computed in float32 or wider, also under autocast.
    """
    _check_inputs(rule, keys, values, lrs)
    dtype = torch.promote_types(keys.dtype, torch.float32)
    with torch.autocast(keys.device.type, enabled=False):
        keys, values, lrs = keys.to(dtype), values.to(dtype), lrs.to(dtype)
        if not parallel or rule not in PARALLEL_RULES:
            return _loop(rule, keys, values, lrs, return_steps)
        left, right = _rank1_factors(rule, keys, values, lrs)  # (N, T, d_value), (N, T, d_key)
        if not return_steps:
            return left.transpose(1, 2) @ right  # (N, d_value, d_key)
        updates = left.unsqueeze(-1) * right.unsqueeze(-2)  # (N, T, d_value, d_key)
        canvases = updates.cumsum(dim=1)
        return canvases[:, -1], updates, canvases


def _rank1_factors(rule: str, keys: Tensor, values: Tensor, lrs: Tensor) -> tuple[Tensor, Tensor]:
    """(a_t, b_t) with W_T = sum_t a_t (x) b_t."""
    if rule == "additive":
        return values, keys
    if rule == "delta":
        return _triangular_solve(gram_of=keys, rhs=values, lrs=lrs), keys
    return values, _triangular_solve(gram_of=values, rhs=keys, lrs=lrs)  # oja


def _triangular_solve(gram_of: Tensor, rhs: Tensor, lrs: Tensor) -> Tensor:
    """Solve (I + diag(s) tril(X X^T, -1)) Y = diag(s) R for Y (N, T, d)."""
    gram = gram_of @ gram_of.transpose(1, 2)  # (N, T, T)
    lower = torch.tril(gram, diagonal=-1) * lrs.unsqueeze(-1)  # row t scaled by s_t
    return unit_lower_solve(lower, lrs.unsqueeze(-1) * rhs)


def unit_lower_solve(lower: Tensor, rhs: Tensor) -> Tensor:
    """Y = (I + L)^{-1} R for the strictly lower triangle L of ``lower`` (N, T, T) and R (N, T, d).

    torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True) with the same gradients,
    but the solves, forward and backward, run on one CPU thread: batches of T x T LAPACK calls this small
    stall on the threads' synchronisation when other processes load the cores (fpa_core.threads)."""
    return _UnitLowerSolve.apply(lower, rhs)


class _UnitLowerSolve(torch.autograd.Function):
    """Y = M^{-1} R, M = I + tril(lower, -1). Backward: dR = M^{-T} dY, d lower = -tril(dR Y^T, -1)."""

    @staticmethod
    def forward(ctx, lower: Tensor, rhs: Tensor) -> Tensor:
        with _solver_threads(lower):
            y = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        ctx.save_for_backward(lower, y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        lower, y = ctx.saved_tensors
        with _solver_threads(lower):  # differentiable ops: a second derivative works too
            grad_rhs = torch.linalg.solve_triangular(lower.transpose(-2, -1), grad_y, upper=True, unitriangular=True)
        grad_lower = -torch.tril(grad_rhs @ y.transpose(-2, -1), diagonal=-1)
        return grad_lower, grad_rhs


def _solver_threads(t: Tensor):
    return one_cpu_thread() if t.device.type == "cpu" else contextlib.nullcontext()


def _loop(rule: str, keys: Tensor, values: Tensor, lrs: Tensor, return_steps: bool):
    """The reference: T sequential rank-1 updates of W."""
    n, steps, d_key = keys.shape
    d_value = values.shape[-1]
    weights = keys.new_zeros(n, d_value, d_key)  # (N, d_value, d_key)
    updates, canvases = [], []
    for t in range(steps):
        k, v, s = keys[:, t], values[:, t], lrs[:, t, None]  # (N, d_key), (N, d_value), (N, 1)
        if rule == "delta":
            update = _outer(s * (v - _matvec(weights, k)), k)
        elif rule == "additive":
            update = _outer(v, k)
        elif rule == "oja":
            update = _outer(s * v, k - _matvec(weights.transpose(1, 2), v))
        else:  # oja-softmax
            update = _outer(s * v, (k - _matvec(weights.transpose(1, 2), v)).softmax(dim=-1))
        weights = weights + update
        if return_steps:
            updates.append(update)
            canvases.append(weights)
    if not return_steps:
        return weights
    return weights, torch.stack(updates, dim=1), torch.stack(canvases, dim=1)


def _matvec(matrix: Tensor, vector: Tensor) -> Tensor:
    return (matrix @ vector.unsqueeze(-1)).squeeze(-1)


def _outer(left: Tensor, right: Tensor) -> Tensor:
    return left.unsqueeze(-1) * right.unsqueeze(-2)


def _check_inputs(rule: str, keys: Tensor, values: Tensor, lrs: Tensor) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}: choose one of {', '.join(RULES)}")
    if keys.dim() != 3 or values.dim() != 3 or lrs.dim() != 2:
        raise ValueError(
            "apply_rule expects keys (N, T, d_key), values (N, T, d_value) and lrs (N, T); "
            f"got keys {tuple(keys.shape)}, values {tuple(values.shape)}, lrs {tuple(lrs.shape)}"
        )
    if keys.shape[:2] != values.shape[:2] or keys.shape[:2] != lrs.shape:
        raise ValueError(
            "keys, values and lrs must agree on (N, T); "
            f"got keys {tuple(keys.shape)}, values {tuple(values.shape)}, lrs {tuple(lrs.shape)}"
        )
