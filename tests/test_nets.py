"""Score networks (``scoresde.nets``): time embeddings against their formulas (Vaswani et al.
2017, Section 3.5; Tancik et al. 2020), output shapes for the image sizes the package serves
(8x8 digits, 28x28 MNIST, 32x32 CIFAR-10), argument validation, batch independence of the U-Net
(GroupNorm and attention act within a sample), and gradient flow to every parameter."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from scoresde.nets import GaussianFourierEmbedding, MLPScoreNet, SinusoidalEmbedding, UNet


pytestmark = pytest.mark.usefixtures("single_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------
def test_sinusoidal_embedding_is_the_transformer_position_encoding():
    """Vaswani et al.: PE(pos, 2i) = sin(pos / P^(2i/d)), PE(pos, 2i+1) = cos(pos / P^(2i/d)); ours
    groups the sines (columns 0..d/2-1) before the cosines (columns d/2..d-1)."""
    d, P = 10, 10000.0
    emb = SinusoidalEmbedding(d, max_period=P)
    pos = [0.0, 1.0, 3.5, 250.0, 999.0]
    out = emb(torch.tensor(pos, dtype=torch.float64))
    assert out.shape == (len(pos), d) and out.dtype == torch.float64
    for b, p in enumerate(pos):
        for i in range(d // 2):
            angle = p / P ** (2 * i / d)
            assert abs(float(out[b, i]) - math.sin(angle)) < 1e-5
            assert abs(float(out[b, d // 2 + i]) - math.cos(angle)) < 1e-5
    # Frequencies from 1 down to P^(-(h-1)/h).
    assert abs(float(emb.freqs[0]) - 1.0) < 1e-7
    assert abs(float(emb.freqs[-1]) - P ** (-(d // 2 - 1) / (d // 2))) < 1e-7


@given(t=st.floats(-1000, 1000), k=st.floats(-50, 50))
def test_sinusoidal_shift_is_a_rotation(t, k):
    """The property that motivated the encoding: emb(t + k) is emb(t) rotated by the angle w_i k in
    every (sin, cos) pair, a linear map independent of t."""
    emb = SinusoidalEmbedding(8).double()
    e0, e1 = emb(torch.tensor([t], dtype=torch.float64))[0], emb(torch.tensor([t + k], dtype=torch.float64))[0]
    w = emb.freqs.double()
    s0, c0 = e0[:4], e0[4:]
    rot_s = s0 * torch.cos(w * k) + c0 * torch.sin(w * k)
    rot_c = c0 * torch.cos(w * k) - s0 * torch.sin(w * k)
    assert torch.allclose(e1[:4], rot_s, atol=1e-9) and torch.allclose(e1[4:], rot_c, atol=1e-9)


def test_fourier_embedding_formula_and_seed():
    a, b = GaussianFourierEmbedding(16, scale=3.0, seed=7), GaussianFourierEmbedding(16, scale=3.0, seed=7)
    c = GaussianFourierEmbedding(16, scale=3.0, seed=8)
    assert torch.equal(a.W, b.W) and not torch.equal(a.W, c.W)
    t = torch.tensor([-1.3, 0.0, 0.7, 2.5])
    out = a(t)
    W = a.W
    for bi in range(4):
        for i in range(8):
            ang = 2 * math.pi * float(W[i]) * float(t[bi])
            assert abs(float(out[bi, i]) - math.sin(ang)) < 1e-4
            assert abs(float(out[bi, 8 + i]) - math.cos(ang)) < 1e-4
    # The frequencies are saved with the model (a buffer), so a checkpoint restores them.
    assert "W" in a.state_dict()


def test_fourier_frequencies_have_the_requested_scale():
    """W ~ N(0, scale^2): the sample std of 20000 draws is within 4 standard errors
    (SE of a normal sample std = scale / sqrt(2 n)) of the scale, and the mean within 4 scale/sqrt(n)."""
    n, scale = 20000, 16.0
    W = GaussianFourierEmbedding(2 * n, scale=scale, seed=0).W.double()
    assert abs(float(W.std()) - scale) < 4 * scale / math.sqrt(2 * n)
    assert abs(float(W.mean())) < 4 * scale / math.sqrt(n)


@pytest.mark.parametrize("make", [lambda: SinusoidalEmbedding(7), lambda: SinusoidalEmbedding(0),
                                  lambda: SinusoidalEmbedding(8, max_period=1.0),
                                  lambda: GaussianFourierEmbedding(5), lambda: GaussianFourierEmbedding(8, scale=0.0),
                                  lambda: GaussianFourierEmbedding(8, scale=float("nan"))])
def test_embedding_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_embedding_needs_a_vector_of_times():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        SinusoidalEmbedding(8)(torch.zeros(3, 1))
    with pytest.raises(TypeError):
        SinusoidalEmbedding(8)(0.5)
    # Integer step indices are accepted (cast to float).
    assert SinusoidalEmbedding(8)(torch.arange(3)).shape == (3, 8)


# ---------------------------------------------------------------------------------------------
# MLP
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_shapes_and_time_dependence(embedding):
    net = MLPScoreNet(4, hidden=32, depth=2, embedding=embedding, emb_dim=16)
    t = torch.rand(5, generator=gen(0))
    for shape in [(5, 4), (5, 1, 2, 2), (5, 2, 2)]:
        x = torch.randn(shape, generator=gen(1))
        out = net(x, t)
        assert out.shape == x.shape
    # Flattening is a reshape: the (B, 1, 2, 2) output is the (B, 4) output reshaped.
    x = torch.randn(5, 4, generator=gen(2))
    assert torch.allclose(net(x.reshape(5, 1, 2, 2), t).reshape(5, 4), net(x, t))
    # The time input matters.
    assert not torch.allclose(net(x, t), net(x, t + 1.0))


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        MLPScoreNet(0)
    with pytest.raises(ValueError, match="depth"):
        MLPScoreNet(2, depth=0)
    with pytest.raises(ValueError, match="embedding"):
        MLPScoreNet(2, embedding="learned")
    net = MLPScoreNet(3, hidden=8, depth=1, emb_dim=8)
    with pytest.raises(ValueError, match="dim=3"):
        net(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"t_net"):
        net(torch.zeros(2, 3), torch.zeros(3))


def _assert_all_grads(net: nn.Module, out: torch.Tensor):
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, f"{name} gets no gradient"


def test_mlp_gradients_reach_every_parameter():
    net = MLPScoreNet(2, hidden=16, depth=2, emb_dim=8)
    _assert_all_grads(net, net(torch.randn(6, 2, generator=gen(3)), torch.rand(6, generator=gen(4)) * 999))


# ---------------------------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------------------------
UNET_CASES = {
    "digits8": dict(in_channels=1, size=8, channel_mults=(1, 2), attn_resolutions=(4,)),
    "mnist28": dict(in_channels=1, size=28, channel_mults=(1, 2, 2), attn_resolutions=(7,)),
    "cifar32": dict(in_channels=3, size=32, channel_mults=(1, 2, 2), attn_resolutions=(8,)),
}


def small_unet(case, **kw):
    c = dict(UNET_CASES[case])
    size = c.pop("size")
    return UNet(channels=8, image_size=size, **c, **kw), size


@pytest.mark.parametrize("case", list(UNET_CASES))
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_unet_output_shape(case, embedding):
    net, size = small_unet(case, embedding=embedding)
    x = torch.randn(2, net.in_channels, size, size, generator=gen(5))
    out = net(x, torch.tensor([10.0, 900.0]))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    # Every GroupNorm's group count divides its channels and is at most 32.
    for mod in net.modules():
        if isinstance(mod, nn.GroupNorm):
            assert mod.num_channels % mod.num_groups == 0 and mod.num_groups <= 32


def test_unet_without_image_size_accepts_any_divisible_size():
    net = UNet(in_channels=2, channels=8, channel_mults=(1, 2))
    for hw in [(8, 8), (12, 16), (28, 28)]:
        x = torch.randn(1, 2, *hw, generator=gen(6))
        assert net(x, torch.zeros(1)).shape == x.shape
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.zeros(1, 2, 9, 8), torch.zeros(1))


def test_unet_groupnorm_groups_for_odd_widths():
    """Width 12 has no 32 groups: the largest divisor <= 32 (12, then 24 at the second level)."""
    net = UNet(in_channels=1, channels=12, channel_mults=(1, 2), image_size=8, attn_resolutions=(4,), num_heads=3)
    groups = {(m.num_channels, m.num_groups) for m in net.modules() if isinstance(m, nn.GroupNorm)}
    assert (12, 12) in groups and (24, 24) in groups
    assert net(torch.randn(2, 1, 8, 8), torch.ones(2)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=28, channel_mults=(1, 2, 2, 2)), "divisible by 8"),
    (dict(attn_resolutions=(4,)), "image_size"),
    (dict(image_size=8, attn_resolutions=(2,)), "not a level size"),
    (dict(image_size=8, channel_mults=()), "channel_mults"),
    (dict(image_size=8, channel_mults=(1, 0)), "channel_mults"),
    (dict(image_size=8, dropout=1.0), "dropout"),
    (dict(image_size=8, channels=7), "even"),
    (dict(image_size=8, attn_resolutions=(8,), num_heads=3), "num_heads"),
    (dict(image_size=8, num_res_blocks=0), "num_res_blocks"),
    (dict(image_size=(8,)), "image_size"),
    (dict(image_size=8, embedding="rope"), "embedding"),
])
def test_unet_bad_arguments(kwargs, match):
    base = dict(in_channels=1, channels=8)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        UNet(**base)


def test_unet_bad_inputs():
    net = UNet(in_channels=1, channels=8, image_size=8)
    with pytest.raises(ValueError, match="channels"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="image_size"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(torch.zeros(2, 64), torch.zeros(2))
    with pytest.raises(ValueError, match="t_net"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1))


def test_unet_is_batch_independent():
    """In eval mode a sample's output alone equals its output inside a batch, and the Jacobian of one
    sample's output with respect to any other sample's input is exactly zero (no batch coupling)."""
    net, size = small_unet("digits8", dropout=0.1)
    net.eval()
    x = torch.randn(4, 1, size, size, generator=gen(7))
    t = torch.tensor([1.0, 50.0, 400.0, 999.0])
    batch = net(x, t)
    for i in range(4):
        alone = net(x[i:i + 1], t[i:i + 1])
        assert torch.allclose(alone, batch[i:i + 1], atol=1e-5, rtol=1e-5)
    xg = x.clone().requires_grad_(True)
    net(xg, t)[0].sum().backward()
    assert float(xg.grad[0].abs().max()) > 0
    assert float(xg.grad[1:].abs().max()) == 0.0


def test_unet_gradients_reach_every_parameter():
    net, size = small_unet("digits8")
    x = torch.randn(3, 1, size, size, generator=gen(8))
    _assert_all_grads(net, net(x, torch.tensor([3.0, 300.0, 700.0])))


# ---------------------------------------------------------------------------------------------
# Class-conditional networks (Ho & Salimans 2022: one network, a learned class embedding with a
# null class added to the time embedding).
# ---------------------------------------------------------------------------------------------
from scoresde._utils import NULL_CLASS  # noqa: E402
from scoresde.nets import ClassEmbedding  # noqa: E402


def test_class_embedding_is_a_table_lookup_with_the_null_class_last():
    """Row k of the table for label k, the last row (index K) for NULL_CLASS and for y=None."""
    emb = ClassEmbedding(3, 4)
    W = emb.table.weight
    assert W.shape == (4, 4)
    out = emb(torch.tensor([0, 2, NULL_CLASS, 1]), 4, torch.device("cpu"))
    assert torch.equal(out, W[[0, 2, 3, 1]])
    assert torch.equal(emb(None, 2, torch.device("cpu")), W[[3, 3]])
    with pytest.raises(ValueError, match="num_classes"):
        ClassEmbedding(0, 4)


def _cond_nets(K=3):
    mlp = MLPScoreNet(2, hidden=16, depth=2, emb_dim=8, num_classes=K)
    # norm_groups=4: two channels or more per GroupNorm group. With one channel per group (8 channels,
    # up to 32 groups) GroupNorm removes the per-channel shift that carries the time and class input.
    unet = UNet(in_channels=1, channels=8, image_size=8, num_classes=K, norm_groups=4).eval()
    return [(mlp, torch.randn(5, 2, generator=gen(11))), (unet, torch.randn(5, 1, 8, 8, generator=gen(12)))]


@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "unet"])
def test_labels_change_the_output_row_by_row_and_none_is_the_null_class(which):
    net, x = _cond_nets()[which]
    assert net.num_classes == 3
    t = torch.tensor([1.0, 100.0, 300.0, 600.0, 900.0])
    y = torch.tensor([0, 1, 2, NULL_CLASS, 1])
    base = net(x, t, y)
    # y=None is the null class for every row, bitwise
    assert torch.equal(net(x, t), net(x, t, torch.full((5,), NULL_CLASS)))
    # changing the label of row 0 changes row 0 only (each row reads its own label)
    y2 = y.clone()
    y2[0] = 2
    other = net(x, t, y2)
    assert not torch.allclose(other[0], base[0])
    torch.testing.assert_close(other[1:], base[1:], rtol=1e-5, atol=1e-6)
    # every pair of distinct labels (null included) gives a distinct output at the same (x, t)
    outs = [net(x, t, torch.full((5,), k)) for k in (0, 1, 2, NULL_CLASS)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert float((outs[i] - outs[j]).detach().abs().max()) > 1e-4, (i, j)


def test_a_zero_class_embedding_leaves_the_unconditional_network():
    """The class input is added to the time features: with the table set to zero, a conditional
    network is the unconditional one of the same seed (whose initialisation the class input does
    not change: the table is created last), for every label."""
    for make, x in ((lambda k: MLPScoreNet(2, 16, 2, "sinusoidal", 8, num_classes=k), torch.randn(4, 2)),
                    (lambda k: UNet(1, 8, image_size=8, num_classes=k), torch.randn(4, 1, 8, 8))):
        torch.manual_seed(5)
        plain = make(0)
        torch.manual_seed(5)
        cond = make(4)
        assert plain.num_classes == 0 and "class_embed.table.weight" not in plain.state_dict()
        shared = {k: v for k, v in cond.state_dict().items() if not k.startswith("class_embed.")}
        assert shared.keys() == plain.state_dict().keys()
        for k, v in plain.state_dict().items():
            assert torch.equal(v, shared[k]), k
        nn.init.zeros_(cond.class_embed.table.weight)
        t = torch.tensor([3.0, 200.0, 500.0, 999.0])
        assert torch.equal(cond(x, t, torch.tensor([0, 3, NULL_CLASS, 1])), plain(x, t))


@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "unet"])
def test_label_input_checks(which):
    net, x = _cond_nets()[which]
    t = torch.ones(5)
    with pytest.raises(TypeError, match="integer"):
        net(x, t, torch.zeros(5))
    with pytest.raises(TypeError, match="integer"):
        net(x, t, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        net(x, t, torch.zeros(5, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="is on meta"):
        net(x, t, torch.zeros(5, dtype=torch.long, device="meta"))
    with pytest.raises(TypeError, match="tensor"):
        net(x, t, [0, 1, 2, 0, 1])
    assert net(x, t, torch.zeros(5, dtype=torch.int32)).shape == x.shape  # any integer dtype
    plain = (MLPScoreNet(2, hidden=8, depth=1, emb_dim=8) if which == 0 else UNet(1, 8, image_size=8))
    with pytest.raises(ValueError, match="num_classes=0"):
        plain(x, t, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        MLPScoreNet(2, num_classes=-1)


def test_conditional_gradients_reach_the_rows_in_use_only():
    net = MLPScoreNet(2, hidden=16, depth=2, emb_dim=8, num_classes=4)
    y = torch.tensor([0, 2, NULL_CLASS, 2])
    net(torch.randn(4, 2, generator=gen(13)), torch.rand(4, generator=gen(14)) * 999, y).square().mean().backward()
    g = net.class_embed.table.weight.grad.abs().sum(dim=1)
    assert bool((g[[0, 2, 4]] > 0).all()) and bool((g[[1, 3]] == 0).all())


@pytest.mark.parametrize("cond", ["scale_shift", "add"])
def test_unet_time_input_survives_the_norm_only_with_scale_shift(cond):
    """A U-Net whose levels have 8 channels has one channel per GroupNorm group (norm_groups=32).
    DDPM's block adds the time embedding before that norm, which subtracts each channel's spatial
    mean, so the per-channel shift is removed exactly and the output cannot depend on t (up to
    rounding); the scale-shift block applies it after the norm, and the output does."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, channels=8, channel_mults=(1,), image_size=8, num_classes=3, conditioning=cond).eval()
    x = torch.randn(4, 1, 8, 8, generator=gen(21))
    with torch.no_grad():
        a = net(x, torch.full((4,), 10.0))
        b = net(x, torch.full((4,), 900.0))
        c = net(x, torch.full((4,), 10.0), torch.tensor([0, 1, 2, 0]))
    change_t, change_y = float((a - b).abs().max()), float((a - c).abs().max())
    scale = float(a.abs().mean())
    if cond == "add":
        assert change_t < 1e-5 * scale and change_y < 1e-5 * scale
    else:
        assert change_t > 0.05 * scale and change_y > 0.01 * scale
    with pytest.raises(ValueError, match="conditioning"):
        UNet(in_channels=1, channels=8, conditioning="film")
