"""PAX's weight-conversion code (examples/notebooks/pretrained_resnet18.py, v0.4.3) runs as is.

A torch-like ResNet block's weights, given as NumPy arrays in torch's layout, are converted the
way PAX's notebook does it: Conv2D NCHW kernels permuted to HWIO, BatchNorm2D NCHW statistics as
[1, C, 1, 1] arrays checked with `assert ... .shape == ...` and put in with `replace` and
`replace_node`. The result is checked against a NumPy forward pass of the block.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import paxtrain as pax

EPS = 1e-5
RNG = np.random.default_rng(0)


def _torch_conv(out_c, in_c, k):  # torch's [out, in, kh, kw]
    return RNG.normal(size=(out_c, in_c, k, k)).astype(np.float32) / np.sqrt(in_c * k * k)


def _torch_bn(c):
    return {
        "weight": RNG.uniform(0.5, 1.5, c).astype(np.float32),
        "bias": RNG.normal(size=c).astype(np.float32),
        "running_mean": RNG.normal(size=c).astype(np.float32),
        "running_var": RNG.uniform(0.5, 2.0, c).astype(np.float32),
    }


def convert_conv(weight, name=None):  # PAX's notebook, with a NumPy weight
    in_c, out_c = weight.shape[1], weight.shape[0]
    weight = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
    pax_conv = pax.nn.Conv2D(
        in_features=in_c,
        out_features=out_c,
        kernel_shape=weight.shape[:2],
        stride=1,
        with_bias=False,
        padding=[(1, 1), (1, 1)],
        data_format="NCHW",
        name=name,
    )
    assert pax_conv.weight.shape == weight.shape
    return pax_conv.replace(weight=weight)


def convert_bn(bn, name=None):  # PAX's notebook
    weight = bn["weight"][None, :, None, None]
    bias = bn["bias"][None, :, None, None]
    running_mean = bn["running_mean"][None, :, None, None]
    running_var = bn["running_var"][None, :, None, None]
    pax_bn = pax.nn.BatchNorm2D(
        num_channels=bias.shape[1],
        create_offset=True,
        create_scale=True,
        decay_rate=0.9,
        eps=1e-5,
        data_format="NCHW",
        name=name,
    )
    assert pax_bn.scale.shape == weight.shape
    assert pax_bn.offset.shape == bias.shape
    assert pax_bn.ema_mean.averages.shape == running_mean.shape
    assert pax_bn.ema_var.averages.shape == running_var.shape
    pax_bn = pax_bn.replace(scale=weight, offset=bias)
    pax_bn = pax_bn.replace_node(pax_bn.ema_mean.averages, running_mean)
    pax_bn = pax_bn.replace_node(pax_bn.ema_var.averages, running_var)
    return pax_bn


def _np_conv_nchw(x, w):  # 3x3, stride 1, padding 1; w is torch's [out, in, 3, 3]
    n, c, h, width = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, width), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + h, j : j + width], w[:, :, i, j])
    return out


def _np_bn_eval(x, bn):
    r = lambda v: v[None, :, None, None]  # noqa: E731
    return (x - r(bn["running_mean"])) / np.sqrt(r(bn["running_var"]) + EPS) * r(bn["weight"]) + r(
        bn["bias"]
    )


def test_resnet_block_converted_as_in_pax_matches_numpy():
    c = 4
    w1, w2 = _torch_conv(c, c, 3), _torch_conv(c, c, 3)
    bn1, bn2 = _torch_bn(c), _torch_bn(c)
    block = pax.nn.Sequential(
        convert_conv(w1, "conv1"),
        convert_bn(bn1, "bn1"),
        jnp.tanh,
        convert_conv(w2, "conv2"),
        convert_bn(bn2, "bn2"),
    ).eval()
    x = RNG.normal(size=(2, c, 5, 5)).astype(np.float32)
    expected = _np_bn_eval(_np_conv_nchw(np.tanh(_np_bn_eval(_np_conv_nchw(x, w1), bn1)), w2), bn2)
    np.testing.assert_allclose(block(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_batchnorm_shapes_are_paxs():
    assert pax.nn.BatchNorm2D(3).scale.shape == (1, 1, 1, 3)
    assert pax.nn.BatchNorm2D(3, data_format="NCHW").ema_var.averages.shape == (1, 3, 1, 1)
    assert pax.nn.BatchNorm1D(3).offset.shape == (1, 1, 3)
    assert pax.nn.BatchNorm1D(3, data_format="NCW").scale.shape == (1, 3, 1)


def test_training_keeps_the_running_averages_in_paxs_shape():
    bn = pax.nn.BatchNorm2D(3, data_format="NCHW", decay_rate=0.5)
    x = RNG.normal(size=(4, 3, 2, 2)).astype(np.float32)
    new_bn, _ = pax.purecall(bn, jnp.asarray(x))
    assert new_bn.ema_mean.averages.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(
        new_bn.ema_mean.averages, x.mean((0, 2, 3), keepdims=True), rtol=1e-5, atol=1e-6
    )


def test_batchnorm1d_on_rank_2_inputs_still_works():
    x = RNG.normal(size=(5, 3)).astype(np.float32)
    new_bn, y = pax.purecall(pax.nn.BatchNorm1D(3), jnp.asarray(x))
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_bn.ema_var.averages, x.var(0)[None, None], rtol=1e-5)


@pytest.mark.parametrize(
    "make, attr, bad",
    [
        (lambda: pax.nn.BatchNorm2D(3, data_format="NCHW"), "scale", np.ones(3)),
        (lambda: pax.nn.BatchNorm2D(3), "offset", np.ones((1, 3, 1, 1))),
        (lambda: pax.nn.LayerNorm(3, -1, True, True), "scale", np.ones((1, 3))),
        (lambda: pax.nn.GroupNorm(1, 3), "offset", np.ones((3, 1))),
    ],
)
def test_a_wrongly_shaped_replace_is_refused_not_broadcast(make, attr, bad):
    layer = make().replace(**{attr: jnp.asarray(bad)}).eval()
    x = jnp.ones((2, 3, 3, 3))
    with pytest.raises(ValueError, match=rf"{attr} has shape .* but this layer was built for"):
        layer(x)


def test_a_wrongly_shaped_running_average_is_refused():
    bn = pax.nn.BatchNorm2D(3).eval()
    bn = bn.replace_node(bn.ema_mean.averages, jnp.zeros(3))
    with pytest.raises(ValueError, match=r"ema_mean.averages has shape \(3,\)"):
        bn(jnp.ones((2, 2, 2, 3)))


def test_linear_refuses_a_bias_that_does_not_match_its_weight():
    layer = pax.nn.Linear(3, 1).replace(bias=jnp.zeros(4))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), but the weight"):
        layer(jnp.ones((2, 3)))


def test_group_norm_channels_first_applies_scale_and_offset_along_the_channel_axis():
    """Decided: [C] scale/offset apply along the channel axis for channels-first data, learned
    or given at call time. (PAX broadcast a given one along the last axis.)"""
    x = RNG.normal(size=(2, 4, 3, 3)).astype(np.float32)
    scale = RNG.uniform(0.5, 1.5, 4).astype(np.float32)
    offset = RNG.normal(size=4).astype(np.float32)
    g = x.reshape(2, 2, 2, 3, 3)
    normed = (g - g.mean((2, 3, 4), keepdims=True)) / np.sqrt(g.var((2, 3, 4), keepdims=True) + EPS)
    expected = normed.reshape(x.shape) * scale[:, None, None] + offset[:, None, None]
    own = pax.nn.GroupNorm(2, 4, data_format="channels_first")
    own = own.replace(scale=jnp.asarray(scale), offset=jnp.asarray(offset))
    np.testing.assert_allclose(own(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)
    given = pax.nn.GroupNorm(2, 4, create_scale=False, create_offset=False, data_format="NC...")
    np.testing.assert_allclose(given(jnp.asarray(x), scale, offset), expected, rtol=1e-4, atol=1e-5)
