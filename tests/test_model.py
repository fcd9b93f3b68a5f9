"""The FPA generator: every variant's shapes, presets against Table 3, painting, determinism."""

import itertools

import pytest
import torch

from fpa_core import ConfigError, FPAGenerator, ModelConfig
from fpa_core.presets import PRESETS, TABLE3_PARAMS_M, TABLE3_TOTAL_M


def tiny(**overrides) -> ModelConfig:
    base = dict(d_latent=16, d_in=4, d_in_proj=8, d_hidden=12, num_layers=1, height=6, width=10, steps=5)
    return ModelConfig(**{**base, **overrides})


VARIANTS = list(itertools.product(["v1", "v2"], [False, True], [False, True], ["delta", "additive", "oja"],
                                  [False, True])) + [("v2", False, False, "oja-softmax", True)]  # loop only


@pytest.mark.parametrize("version,input_tanh,latent_to_init,rule,output_tanh", VARIANTS)
def test_every_variant_paints_the_right_shapes(version, input_tanh, latent_to_init, rule, output_tanh):
    cfg = tiny(input_generator=version, input_tanh=input_tanh, latent_to_init=latent_to_init, rule=rule,
               output_tanh=output_tanh, num_layers=2)
    G = FPAGenerator(cfg)
    z = torch.randn(3, 16)
    p = G.paint(z)
    assert p.image.shape == (3, 3, 6, 10)  # (B, c, height = d_value, width = d_key)
    assert p.updates.shape == p.canvases.shape == (3, 5, 3, 6, 10)
    assert p.keys.shape == (3, 5, 3, 10) and p.values.shape == (3, 5, 3, 6) and p.lrs.shape == (3, 5, 3)
    torch.testing.assert_close(p.keys.sum(-1), torch.ones(3, 5, 3))
    assert ((p.lrs > 0) & (p.lrs < 1)).all()
    final = torch.tanh(p.canvases[:, -1]) if output_tanh else p.canvases[:, -1]
    torch.testing.assert_close(p.image, final)
    torch.testing.assert_close(p.canvases, p.updates.cumsum(dim=1))
    torch.testing.assert_close(G(z), p.image)
    assert (G.sequence_processor.latent_to_init is not None) == latent_to_init


def test_v1_unrolls_to_any_number_of_steps_and_v2_does_not():
    G = FPAGenerator(tiny(input_generator="v1"))
    z = torch.randn(2, 16)
    for steps in (1, 5, 40):
        p = G.paint(z, steps=steps)
        assert p.updates.shape[1] == steps and p.image.shape == (2, 3, 6, 10)
    v2 = FPAGenerator(tiny(input_generator="v2"))
    with pytest.raises(ValueError, match="only v1 unrolls to any T"):
        v2(z, steps=7)


def test_parallel_and_loop_generators_agree_with_gradients():
    torch.manual_seed(0)
    loop = FPAGenerator(tiny(parallel=False, height=16, width=16, steps=16))
    parallel = FPAGenerator(tiny(parallel=True, height=16, width=16, steps=16))
    parallel.load_state_dict(loop.state_dict())
    z = torch.randn(4, 16)
    out_loop, out_parallel = loop(z), parallel(z)
    torch.testing.assert_close(out_parallel, out_loop, rtol=0, atol=1e-5)
    out_loop.square().sum().backward()
    out_parallel.square().sum().backward()
    for (name, p_loop), p_parallel in zip(loop.named_parameters(), parallel.parameters()):
        torch.testing.assert_close(p_parallel.grad, p_loop.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_the_lstm_is_its_equations_with_the_input_projection_over_all_steps():
    """nn.LSTM (oneDNN's fused RNN on CPU) against the maths written out: per layer, the input projection
    of all T steps as one matmul, then c_t = f c_{t-1} + i g, h_t = o tanh(c_t); outputs and gradients."""
    torch.manual_seed(0)
    seq = FPAGenerator(tiny(num_layers=2)).sequence_processor
    lstm, x = seq.lstm, torch.randn(3, 5, seq.lstm.input_size, requires_grad=True)
    h_seq = x
    for layer in range(lstm.num_layers):
        w_hh = getattr(lstm, f"weight_hh_l{layer}")
        pre = h_seq @ getattr(lstm, f"weight_ih_l{layer}").t() + getattr(lstm, f"bias_ih_l{layer}") \
            + getattr(lstm, f"bias_hh_l{layer}")  # (B, T, 4 H), every step at once
        h = c = x.new_zeros(3, lstm.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            i, f, g, o = (pre[:, t] + h @ w_hh.t()).chunk(4, dim=-1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        h_seq = torch.stack(outs, dim=1)  # (B, T, H)
    ours = seq(x, z=None)
    torch.testing.assert_close(ours, h_seq, rtol=0, atol=1e-6)
    grads = torch.autograd.grad(ours.square().sum(), [x, *lstm.parameters()])
    expected = torch.autograd.grad(h_seq.square().sum(), [x, *lstm.parameters()])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


EXPECTED_COUNTS = {
    "celeba": 13_587_459,
    "metfaces": 219_771_267,
    "afhq-cat": 5_782_531,
    "afhq-dog": 13_652_995,
    "afhq-wild": 5_387_267,
    "lsun-church": 16_675_459,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_match_table3(name):
    with torch.device("meta"):
        G = FPAGenerator.from_preset(name)
    count = G.num_parameters()
    assert count == EXPECTED_COUNTS[name]
    assert G.config.steps == 64 and (G.config.height, G.config.width) == (64, 64)
    if name == "afhq-wild":
        # Table 3 prints 6 M, but its own row (v2, d_latent 512, d_in 8, d_in' 128, 1 layer of 1024, no
        # latent-to-init) gives 5.39 M; see docs/configs.md. We keep the stated hyper-parameters.
        assert round(count / 1e6) == 5
    else:
        assert round(count / 1e6) == TABLE3_PARAMS_M[name]


def test_afhq_wild_fits_both_of_table3s_counts_only_with_latent_to_init():
    """With the 64x64 discriminator (12.33 M), every row's generator + D rounds to its "Total Param Count";
    afhq-wild's does only with latent_to_init on (6.44 + 12.33 = 18.8 -> 19, and 6.44 -> 6), not as printed
    (5.39 + 12.33 = 17.7 -> 18, and 5.39 -> 5)."""
    from fpa_core.discriminator import Discriminator
    from fpa_core.train.config import load_config

    with torch.device("meta"):
        d_count = sum(p.numel() for p in Discriminator(load_config("afhq-wild").discriminator, 64).parameters())

        def counts(name, **overrides):
            g = FPAGenerator.from_preset(name, **overrides).num_parameters()
            return round(g / 1e6), round((g + d_count) / 1e6)

        for name in sorted(set(PRESETS) - {"afhq-wild"}):
            assert counts(name) == (TABLE3_PARAMS_M[name], TABLE3_TOTAL_M[name]), name
        assert counts("afhq-wild") == (5, 18)
        assert counts("afhq-wild", latent_to_init=True) == (TABLE3_PARAMS_M["afhq-wild"], TABLE3_TOTAL_M["afhq-wild"])


def test_a_batch_of_one_paints_the_same_image_as_in_a_batch():
    G = FPAGenerator(tiny(latent_to_init=True))
    z = torch.randn(5, 16)
    batch = G(z)
    for i in range(5):
        one = G(z[i:i + 1])
        assert one.shape == (1, 3, 6, 10)
        torch.testing.assert_close(one[0], batch[i], rtol=1e-5, atol=1e-6)


def test_the_same_seed_gives_the_same_image():
    def paint(seed):
        torch.manual_seed(seed)
        G = FPAGenerator(tiny())
        return G(torch.randn(2, 16))

    assert torch.equal(paint(7), paint(7))
    assert not torch.equal(paint(7), paint(8))


def test_presets_take_overrides():
    G = FPAGenerator.from_preset("metfaces", d_hidden=32, height=8, width=12, steps=4)
    assert G(torch.randn(2, 512)).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="unknown preset 'ffhq': choose one of celeba, metfaces"):
        FPAGenerator.from_preset("ffhq")


def test_latents_of_the_wrong_shape_are_rejected():
    G = FPAGenerator(tiny())
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 16\), got \(2, 15\)"):
        G(torch.randn(2, 15))


def test_a_bad_config_names_every_field():
    with pytest.raises(ConfigError) as e:
        FPAGenerator(tiny(d_hidden=0, steps=-3))
    assert "model.d_hidden: must be a positive integer, got 0" in str(e.value)
    assert "model.steps: must be a positive integer, got -3" in str(e.value)


def test_under_bf16_autocast_the_lstm_the_update_net_and_the_rule_run_in_float32():
    """precision bf16: autocast on, yet the LSTM, the update net's keys, values and learning rates and the
    painted image are float32; only the input generator's Linear layers run in bfloat16."""
    torch.manual_seed(0)
    G = FPAGenerator(tiny(input_generator="v2", latent_to_init=True))
    dtypes = {}

    def keep(name):
        def hook(module, inputs, output):
            outputs = output if isinstance(output, tuple) else (output,)
            dtypes[name] = {t.dtype for t in outputs if isinstance(t, torch.Tensor)}
        return hook

    G.input_generator.register_forward_hook(keep("input_generator"))
    G.sequence_processor.lstm.register_forward_hook(keep("lstm"))
    G.sequence_processor.latent_to_init.register_forward_hook(keep("latent_to_init"))
    G.update_net.register_forward_hook(keep("update_net"))
    z = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        painting = G.paint(z)
    assert dtypes["input_generator"] == {torch.bfloat16}
    assert dtypes["lstm"] == dtypes["latent_to_init"] == dtypes["update_net"] == {torch.float32}
    assert painting.image.dtype == painting.canvases.dtype == torch.float32
    torch.testing.assert_close(painting.image, G(z), rtol=0, atol=0.05)  # only the input's rounding differs


def test_first_step_lr_one_writes_the_first_value_unscaled_as_the_authors_code():
    torch.manual_seed(0)
    eq9 = FPAGenerator(tiny(steps=3))
    reference = FPAGenerator(tiny(steps=3, first_step_lr="one"))
    reference.load_state_dict(eq9.state_dict())
    z = torch.randn(2, 16)
    a, b = eq9.paint(z), reference.paint(z)
    assert (b.lrs[:, 0] == 1).all() and torch.equal(b.lrs[:, 1:], a.lrs[:, 1:])
    v, k = a.values[:, 0], a.keys[:, 0]  # (B, c, H), (B, c, W)
    torch.testing.assert_close(b.canvases[:, 0], v.unsqueeze(-1) * k.unsqueeze(-2))  # W_1 = v_1 (x) k_1
    torch.testing.assert_close(a.canvases[:, 0], a.lrs[:, 0, :, None, None] * v.unsqueeze(-1) * k.unsqueeze(-2))


def test_v1_latent_to_init_starts_kaiming_normal():
    torch.manual_seed(0)
    weight = FPAGenerator(tiny(input_generator="v1", latent_to_init=True, d_hidden=256)).sequence_processor \
        .latent_to_init.weight  # (2 L H, d_latent): fan_in 16, std sqrt(2 / 16)
    assert abs(weight.std().item() - (2 / 16) ** 0.5) < 0.02
    assert weight.abs().max() > 1 / 16 ** 0.5  # beyond nn.Linear's uniform bound 1 / sqrt(fan_in)
