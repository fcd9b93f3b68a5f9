"""The learning rules: loop and parallel forms against a hand-written reference, and their properties."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpa_core.rules import PARALLEL_RULES, RULES, apply_rule


def handwritten(rule, keys, values, lrs):
    """Float64 NumPy, one matrix and one step at a time: the equations as printed."""
    keys, values, lrs = (np.asarray(t, dtype=np.float64) for t in (keys, values, lrs))
    n, steps, d_key = keys.shape
    out = np.zeros((n, values.shape[-1], d_key))
    for i in range(n):
        W = np.zeros((values.shape[-1], d_key))
        for t in range(steps):
            k, v, s = keys[i, t], values[i, t], lrs[i, t]
            if rule == "delta":
                W = W + s * np.outer(v - W @ k, k)
            elif rule == "additive":
                W = W + np.outer(v, k)
            elif rule == "oja":
                W = W + s * np.outer(v, k - W.T @ v)
            else:  # oja-softmax, the authors' code: the corrected key softmaxed again
                corrected = k - W.T @ v
                W = W + s * np.outer(v, np.exp(corrected - corrected.max()) / np.exp(corrected - corrected.max()).sum())
        out[i] = W
    return out


def random_inputs(n, steps, d_key, d_value, dtype=torch.float32, seed=0, value_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, steps, d_key, generator=g, dtype=dtype)
    values = value_scale * torch.randn(n, steps, d_value, generator=g, dtype=dtype)
    betas = torch.randn(n, steps, generator=g, dtype=dtype)
    return logits, values, betas


def activated(logits, values, betas):
    return logits.softmax(-1), values, betas.sigmoid()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("parallel", [False, True])
def test_rule_matches_handwritten_loop(rule, parallel):
    # Oja is only stable for |v|^2 s < 2: keep the values small, as a trained painter would.
    inputs = activated(*random_inputs(3, 16, 10, 7, value_scale=0.3))
    expected = handwritten(rule, *inputs)
    got = apply_rule(rule, *inputs, parallel=parallel)
    assert got.shape == (3, 7, 10)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rule", PARALLEL_RULES)
def test_parallel_and_loop_agree_at_paper_size_with_gradients(rule):
    # N = 6 matrices, T = 64 steps, 64 x 64: the paper's setting in float32.
    logits, values, betas = random_inputs(6, 64, 64, 64, value_scale=0.125)
    grads, outs = [], []
    for parallel in (False, True):
        leaves = [t.clone().requires_grad_() for t in (logits, values, betas)]
        out = apply_rule(rule, *activated(*leaves), parallel=parallel)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
        grads.append([leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    for g_loop, g_parallel in zip(*grads):
        torch.testing.assert_close(g_parallel, g_loop, rtol=0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    rule=st.sampled_from(PARALLEL_RULES),
    n=st.integers(1, 3),
    steps=st.integers(1, 12),
    d_key=st.integers(1, 9),
    d_value=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_forms_agree_on_any_shape(rule, n, steps, d_key, d_value, seed):
    inputs = activated(*random_inputs(n, steps, d_key, d_value, dtype=torch.float64, seed=seed, value_scale=0.3))
    loop = apply_rule(rule, *inputs, parallel=False)
    parallel = apply_rule(rule, *inputs, parallel=True)
    torch.testing.assert_close(parallel, loop, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("parallel", [False, True])
def test_steps_are_rank1_updates_summing_to_the_canvases(rule, parallel):
    inputs = activated(*random_inputs(2, 9, 5, 4, value_scale=0.3))
    final, updates, canvases = apply_rule(rule, *inputs, parallel=parallel, return_steps=True)
    assert updates.shape == canvases.shape == (2, 9, 4, 5)
    torch.testing.assert_close(canvases, updates.cumsum(dim=1))
    torch.testing.assert_close(final, canvases[:, -1])
    torch.testing.assert_close(final, apply_rule(rule, *inputs, parallel=parallel))
    ranks = torch.linalg.matrix_rank(updates.reshape(-1, 4, 5), rtol=1e-5)
    assert (ranks <= 1).all()


def test_delta_with_one_hot_key_and_unit_rate_writes_the_value_into_its_column():
    logits, values, betas = random_inputs(2, 6, 8, 5)
    keys, _, lrs = activated(logits, values, betas)
    column = 3
    keys[:, -1] = torch.nn.functional.one_hot(torch.tensor(column), 8).float()
    lrs[:, -1] = 1.0
    for parallel in (False, True):
        W = apply_rule("delta", keys, values, lrs, parallel=parallel)
        torch.testing.assert_close(W[:, :, column], values[:, -1], rtol=0, atol=1e-6)
    # On an empty canvas the write is exact: W_1 = v (x) e_j.
    W1 = apply_rule("delta", keys[:, -1:], values[:, -1:], lrs[:, -1:])
    assert torch.equal(W1[:, :, column], values[:, -1])
    assert torch.count_nonzero(W1[:, :, [c for c in range(8) if c != column]]) == 0


def test_additive_is_the_sum_of_outer_products_and_ignores_the_rates():
    keys, values, lrs = activated(*random_inputs(3, 11, 6, 4))
    expected = torch.einsum("ntv,ntk->nvk", values, keys)
    for parallel in (False, True):
        torch.testing.assert_close(apply_rule("additive", keys, values, lrs, parallel=parallel), expected)
        torch.testing.assert_close(apply_rule("additive", keys, values, torch.zeros_like(lrs), parallel=parallel),
                                   expected)


def test_delta_applies_the_rate_at_the_first_step():
    keys, values, lrs = activated(*random_inputs(1, 1, 4, 3))
    W = apply_rule("delta", keys, values, lrs)
    torch.testing.assert_close(W[0], lrs[0, 0] * torch.outer(values[0, 0], keys[0, 0]))


def test_rule_runs_in_float32_under_autocast():
    inputs = activated(*random_inputs(2, 8, 6, 6))
    expected = apply_rule("delta", *inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = apply_rule("delta", *(t.bfloat16() for t in inputs))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0.05)


def test_bad_arguments_name_the_problem():
    keys, values, lrs = activated(*random_inputs(2, 4, 3, 3))
    with pytest.raises(ValueError, match="unknown learning rule 'hebb': choose one of delta, additive, oja"):
        apply_rule("hebb", keys, values, lrs)
    with pytest.raises(ValueError, match=r"must agree on \(N, T\)"):
        apply_rule("delta", keys, values[:, :3], lrs)
    with pytest.raises(ValueError, match=r"expects keys \(N, T, d_key\)"):
        apply_rule("delta", keys[0], values, lrs)


def test_the_one_thread_solve_has_torchs_values_and_gradients_to_second_order():
    from fpa_core.rules import unit_lower_solve

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    lower = (0.3 * torch.randn(3, 6, 6, dtype=torch.float64)).requires_grad_()
    rhs = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    ours = unit_lower_solve(lower, rhs)
    theirs = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (lower, rhs), grad), torch.autograd.grad(theirs, (lower, rhs), grad)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(unit_lower_solve, (lower, rhs))
    assert torch.autograd.gradgradcheck(unit_lower_solve, (lower, rhs))
    assert torch.get_num_threads() == threads  # put back after every solve
