"""fpa_core on a CUDA GPU (skipped without one; run by benchmarks/gpu_check.sh)."""

import pytest
import torch

from fpa_core import FPAGenerator, ModelConfig, apply_rule
from fpa_core.rules import PARALLEL_RULES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("rule", PARALLEL_RULES)
def test_parallel_and_loop_agree_on_cuda_with_gradients(rule):
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(60, 64, 64, generator=g), torch.randn(60, 64, 64, generator=g) / 8,
              torch.randn(60, 64, generator=g)]
    results = []
    for parallel in (False, True):
        x = [t.cuda().requires_grad_() for t in leaves]
        out = apply_rule(rule, x[0].softmax(-1), x[1], x[2].sigmoid(), parallel=parallel)
        out.square().sum().backward()
        results.append((out.detach(), [t.grad if t.grad is not None else torch.zeros_like(t) for t in x]))
    (out_loop, g_loop), (out_par, g_par) = results
    torch.testing.assert_close(out_par, out_loop, rtol=0, atol=1e-5)
    for a, b in zip(g_par, g_loop):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_generator_on_cuda_matches_cpu_and_runs_under_bf16():
    torch.manual_seed(0)
    G = FPAGenerator(ModelConfig(d_hidden=256, num_layers=1))
    z = torch.randn(4, G.config.d_latent)
    expected = G(z)
    G = G.cuda()
    torch.testing.assert_close(G(z.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = G(z.cuda())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.cpu() - expected).abs().max() < 0.1


def test_under_bf16_autocast_on_cuda_the_lstm_the_update_net_and_the_rule_stay_float32():
    """precision bf16 on a GPU: cuDNN's LSTM would run in float16 under autocast; ours runs in float32."""
    from fpa_core.discriminator import Discriminator
    from fpa_core.model_config import DiscriminatorConfig

    torch.manual_seed(0)
    G = FPAGenerator(ModelConfig(d_hidden=256, num_layers=1)).cuda()
    D = Discriminator(DiscriminatorConfig(fmap_max=32, attn_res_layers=[]), image_size=64).cuda()
    dtypes = {}

    def keep(name, dtype_of):
        def hook(module, inputs, output):  # returns None: the output stays as it is
            dtypes.setdefault(name, dtype_of(output))
        return hook

    G.sequence_processor.lstm.register_forward_hook(keep("lstm", lambda out: out[0].dtype))
    G.update_net.register_forward_hook(keep("update_net", lambda out: {t.dtype for t in out}))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        image = G(torch.randn(4, G.config.d_latent, device="cuda"))
        logits = D(image).logits
    assert dtypes == {"lstm": torch.float32, "update_net": {torch.float32}}
    assert image.dtype == torch.float32 and logits.dtype == torch.bfloat16
