"""The sequence processor's LSTM on CPU: is its input projection fused over T, and how far is it from this
CPU's matmul throughput?

    .venv/bin/python benchmarks/bench_lstm.py [--config celeba] [--rounds 5]

Forward and backward of the config's LSTM (batch, T, widths from the config), four forms, interleaved, medians:
- ``nn.LSTM``: what the generator runs (on CPU, fp32: oneDNN's fused RNN);
- ``nn.LSTM, oneDNN off``: ATen's own CPU path;
- ``loop, fused input``: per layer, the input projection for all T steps as one matmul, then T recurrent steps;
- ``loop, per step``: an ``LSTMCell`` per step and layer, the input projection inside every step.
The two loops are the LSTM's maths written out (``tests/test_model.py`` checks that nn.LSTM agrees with it).
GFLOP/s counts the matmuls only (2 m n k each, forward and twice that backward) against one (B T, d, 4 H)
matmul's throughput on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fpa_core.train.config import load_config


def loop_fused_input(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Per layer: x W_ih^T + b for all T at once (B, T, 4H), then h_t = f(pre_t + h_{t-1} W_hh^T)."""
    h_seq = x
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        pre = torch.addmm(bias, h_seq.flatten(0, 1), w_ih.t()).view(*h_seq.shape[:2], -1)  # (B, T, 4H)
        h = c = x.new_zeros(x.shape[0], lstm.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            i, f, g, o = (pre[:, t] + h @ w_hh.t()).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        h_seq = torch.stack(outs, dim=1)  # (B, T, H)
    return h_seq


def loop_per_step(cells: list[nn.LSTMCell], x: torch.Tensor) -> torch.Tensor:
    h_seq = x
    for cell in cells:
        h = c = x.new_zeros(x.shape[0], cell.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            h, c = cell(h_seq[:, t], (h, c))
            outs.append(h)
        h_seq = torch.stack(outs, dim=1)
    return h_seq


def timed(fn, x: torch.Tensor) -> float:
    x = x.detach().requires_grad_(True)
    start = time.perf_counter()
    fn(x).square().mean().backward()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="celeba")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    cfg = load_config(args.config)
    B, T, H, L = cfg.optim.batch_size, cfg.model.steps, cfg.model.d_hidden, cfg.model.num_layers
    d_in = cfg.model.d_in_proj if cfg.model.input_generator == "v2" else cfg.model.d_latent
    torch.manual_seed(0)
    lstm = nn.LSTM(d_in, H, L, batch_first=True)
    cells = [nn.LSTMCell(d_in if i == 0 else H, H) for i in range(L)]
    for i, cell in enumerate(cells):  # the same weights as the LSTM
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data.copy_(getattr(lstm, f"{name}_l{i}").data)
    x = torch.randn(B, T, d_in)

    with torch.no_grad():
        ours = lstm(x)[0]
        assert torch.allclose(ours, loop_fused_input(lstm, x), atol=1e-5)
        assert torch.allclose(ours, loop_per_step(cells, x), atol=1e-5)

    def no_onednn(inp):
        with torch.backends.mkldnn.flags(enabled=False):
            return lstm(inp)[0]

    forms = {"nn.LSTM": lambda inp: lstm(inp)[0], "nn.LSTM, oneDNN off": no_onednn,
             "loop, fused input": lambda inp: loop_fused_input(lstm, inp),
             "loop, per step": lambda inp: loop_per_step(cells, inp)}
    a, w = torch.randn(B * T, H), torch.randn(4 * H, H, requires_grad=True)  # one big matmul: the ceiling

    def matmul(_):
        return a @ w.t()

    forms["one (B T, H) x (H, 4 H) matmul"] = matmul
    times: dict[str, list[float]] = {k: [] for k in forms}
    for fn in forms.values():
        timed(fn, x)  # warm-up
    for _ in range(args.rounds):
        for name, fn in forms.items():
            times[name].append(timed(fn, x))

    flops = 0  # forward matmuls of the LSTM, x3 for forward and backward
    for layer in range(L):
        d = d_in if layer == 0 else H
        flops += 2 * B * T * (d + H) * 4 * H
    flops *= 3
    ceiling = 3 * 2 * B * T * H * 4 * H
    print(f"{args.config}: B={B}, T={T}, d_in={d_in}, H={H}, L={L}, {torch.get_num_threads()} threads, "
          f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'unavailable'}; {args.rounds} rounds, medians")
    print("| form | forward + backward, ms | GFLOP/s |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        work = ceiling if name.startswith("one ") else flops
        print(f"| {name} | {med * 1e3:,.0f} | {work / med / 1e9:.1f} |")


if __name__ == "__main__":
    main()
