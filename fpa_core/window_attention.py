"""Full attention within each position's 3x3 window, the local half of LightGAN's LinearAttention.

For maps q, k, v of shape (N, d, H, W) (N = batch x heads) and the 9 offsets o of a 3x3 window,

    sim[n, o, y, x] = sum_c q[n, c, y, x] k[n, c, y + o_y, x + o_x]       (k zero outside the map)
    a = softmax over o of sim
    out[n, c, y, x] = sum_o a[n, o, y, x] v[n, c, y + o_y, x + o_x]

A key outside the map is a zero vector: its similarity 0 still takes part in the softmax, as with the
reference's F.unfold(padding=1).

The reference gathers every window with F.unfold and multiplies a (9 x d) by a (d x 1) matrix per
position; the plain PyTorch form of the sums above (9 shifted views, products and sums) allocates a
full-size map for every product and, in autograd, a zero-filled padded map for every shifted view. This
autograd Function computes the same sums, forward and backward, in place into preallocated buffers, a
slice of the batch at a time so that the temporaries stay in cache. ``tests/test_discriminator.py``
checks it against autograd of the plain form.
"""

from __future__ import annotations

import torch
from torch import Tensor

SHIFTS = tuple((i, j) for i in range(3) for j in range(3))  # F.unfold's order of a 3x3 window
_CHUNK_ELEMENTS = 1 << 19  # elements of one (chunk, d, H, W) temporary: 2 MB in float32


def window_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(N, d, H, W) each -> (N, d, H, W): every position attends to its zero-padded 3x3 neighbourhood."""
    if not (q.shape == k.shape == v.shape and q.dim() == 4):
        raise ValueError(f"q, k and v must share one shape (N, d, H, W), got {q.shape}, {k.shape}, {v.shape}")
    return _WindowAttention.apply(q, k, v)


def window_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The same sums in plain PyTorch, for tests: shifted views of the zero-padded keys and values."""
    H, W = q.shape[-2:]
    kp, vp = (torch.nn.functional.pad(t, (1, 1, 1, 1)) for t in (k, v))
    sim = torch.stack([(q * kp[:, :, i:i + H, j:j + W]).sum(1) for i, j in SHIFTS], dim=1)  # (N, 9, H, W)
    a = sim.softmax(dim=1)
    return sum(a[:, n:n + 1] * vp[:, :, i:i + H, j:j + W] for n, (i, j) in enumerate(SHIFTS))


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(per_item, 1))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        N, d, H, W = q.shape
        kp, vp = (torch.nn.functional.pad(t, (1, 1, 1, 1)) for t in (k, v))  # (N, d, H + 2, W + 2)
        a = q.new_empty(N, 9, H, W)
        out = q.new_zeros(N, d, H, W)
        for rows in _chunks(N, d * H * W):
            qc = q[rows]
            tmp, sim = torch.empty_like(qc), q.new_empty(qc.shape[0], 9, H, W)  # (n, d, H, W), (n, 9, H, W)
            for o, (i, j) in enumerate(SHIFTS):
                torch.mul(qc, kp[rows, :, i:i + H, j:j + W], out=tmp)
                torch.sum(tmp, dim=1, out=sim[:, o])
            a[rows] = sim.softmax(dim=1)
            for o, (i, j) in enumerate(SHIFTS):
                out[rows].addcmul_(a[rows, o:o + 1], vp[rows, :, i:i + H, j:j + W])
        ctx.save_for_backward(q, k, v, a)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, a = ctx.saved_tensors
        if torch.is_grad_enabled():  # a derivative of this backward is wanted (the gradient penalty)
            with torch.enable_grad():
                return torch.autograd.grad(window_attention_reference(q, k, v), (q, k, v), grad_out,
                                           create_graph=True)
        N, d, H, W = q.shape
        kp, vp = (torch.nn.functional.pad(t, (1, 1, 1, 1)) for t in (k, v))
        grad_q, grad_kp, grad_vp = torch.zeros_like(q), torch.zeros_like(kp), torch.zeros_like(vp)
        for rows in _chunks(N, d * H * W):
            g, ac, qc = grad_out[rows], a[rows], q[rows]
            tmp, grad_a = torch.empty_like(qc), torch.empty_like(ac)  # (n, d, H, W), (n, 9, H, W)
            for o, (i, j) in enumerate(SHIFTS):
                grad_vp[rows, :, i:i + H, j:j + W].addcmul_(ac[:, o:o + 1], g)
                torch.mul(g, vp[rows, :, i:i + H, j:j + W], out=tmp)
                torch.sum(tmp, dim=1, out=grad_a[:, o])
            grad_sim = ac * (grad_a - (ac * grad_a).sum(dim=1, keepdim=True))  # softmax's backward
            for o, (i, j) in enumerate(SHIFTS):
                grad_q[rows].addcmul_(grad_sim[:, o:o + 1], kp[rows, :, i:i + H, j:j + W])
                grad_kp[rows, :, i:i + H, j:j + W].addcmul_(grad_sim[:, o:o + 1], qc)
        return grad_q, grad_kp[:, :, 1:-1, 1:-1], grad_vp[:, :, 1:-1, 1:-1]
