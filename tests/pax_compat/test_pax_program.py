"""A PAX v0.4.3 training program, written as PAX's README and examples/mnist.py write it, runs
with only `import pax` -> `import paxtrain as pax` and `opax` -> `paxtrain.optim`."""

import jax
import jax.numpy as jnp
import numpy as np

import paxtrain as pax
from paxtrain import optim as opax


class MLP(pax.Module):
    layers: pax.nn.Sequential

    def __init__(self, dims):
        super().__init__()
        self.layers = pax.nn.Sequential()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            self.layers >>= pax.nn.Linear(a, b)
            if i + 2 < len(dims):
                self.layers >>= pax.nn.BatchNorm1D(b, True, True, 0.9)
                self.layers >>= jax.nn.relu
                self.layers >>= pax.nn.Dropout(0.1)

    def __call__(self, x):
        return self.layers(x)


def loss_fn(model: MLP, x, y):
    model, y_hat = pax.module_and_value(model)(x)
    loss = jnp.mean(jnp.square(y_hat - y))
    return loss, (loss, model)


@jax.jit
def update_fn(model, optimizer, x, y):  # examples/mnist.py's update step
    (loss, (_, model)), grads = pax.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    params = model.parameters()
    optimizer, updates = pax.module_and_value(optimizer)(grads, params)
    params = params.map(jax.lax.sub, updates)
    model = model.update_parameters(params)
    return model, optimizer, loss


def _data(n=64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = np.sin(x @ rng.normal(size=(4, 1))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def test_mnist_style_update_loop_trains():
    pax.seed_rng_key(42)
    net = MLP([4, 16, 1])
    optimizer = opax.chain(
        opax.clip_by_global_norm(1.0),
        opax.adamw(learning_rate=1e-2, weight_decay=1e-4),
    )(net.parameters())
    x, y = _data()
    first = None
    for _ in range(40):
        net, optimizer, loss = update_fn(net, optimizer, x, y)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    eval_loss = loss_fn(net.eval(), x, y)[0]
    assert np.isfinite(float(eval_loss))


def test_build_update_fn_and_apply_gradients_train_the_same_model():
    x, y = _data()
    pax.seed_rng_key(0)
    net_a = MLP([4, 8, 1]).eval()  # deterministic: no dropout masks, no statistics updates
    net_b = net_a
    opt_a = opax.adam(1e-2)(net_a.parameters())
    opt_b = opt_a
    update = jax.jit(pax.utils.build_update_fn(loss_fn))

    @jax.jit
    def update_b(net, opt):
        grads, (loss, net) = pax.grad(loss_fn, has_aux=True)(net, x, y)
        net, opt = opax.apply_gradients(net, opt, grads=grads)
        return net, opt, loss, grads

    for _ in range(3):
        net_a, opt_a, loss_a = update(net_a, opt_a, x, y)
        net_b, opt_b, loss_b, grads = update_b(net_b, opt_b)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(net_a), jax.tree_util.tree_leaves(net_b)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # all_finite=False keeps the old model and optimizer, as in opax.
    kept, kept_opt = opax.apply_gradients(net_b, opt_b, grads=grads, all_finite=jnp.array(False))
    for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(net_b)):
        np.testing.assert_array_equal(a, b)


class LM(pax.Module):  # examples/char_rnn.py
    def __init__(self, vocab_size, hidden_dim):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = pax.nn.Embed(vocab_size, hidden_dim)
        self.lstm = pax.nn.LSTM(hidden_dim, hidden_dim)
        self.output = pax.nn.Linear(hidden_dim, vocab_size)

    def __call__(self, x):
        x = self.embed(x)
        hx, x = pax.scan(self.lstm, self.lstm.initial_state(x.shape[0]), x, time_major=False)
        return self.output(x)


def lm_loss_fn(model, batch):
    logits = model(batch[:, :-1])
    log_pr = jax.nn.log_softmax(logits, axis=-1)
    targets = jax.nn.one_hot(batch[:, 1:], num_classes=model.vocab_size)
    return -jnp.mean(jnp.sum(targets * log_pr, axis=-1))


def update_step(model_and_optimizer, batch):
    model, optimizer = model_and_optimizer
    loss, grads = jax.value_and_grad(lm_loss_fn)(model, batch)
    model, optimizer = opax.apply_gradients(model, optimizer, grads=grads)
    return (model, optimizer), loss


@jax.jit
def lm_update_fn(model, optimizer, multi_batch):
    (model, optimizer), losses = pax.scan(update_step, (model, optimizer), multi_batch)
    return model, optimizer, jnp.mean(losses)


def test_char_rnn_example_with_scan_over_steps_trains():
    net = LM(vocab_size=8, hidden_dim=16)
    optimizer = opax.chain(opax.clip_by_global_norm(1.0), opax.adam(1e-2))(net.parameters())
    text = jnp.asarray(np.tile(np.arange(8), 40)[: 4 * 4 * 17].reshape(4, 4, 17), jnp.int32)
    losses = []
    for _ in range(8):
        net, optimizer, loss = lm_update_fn(net, optimizer, text)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_mixed_precision_and_fine_tuning_with_a_frozen_layer():
    """PAX's mixed-precision and fine-tuning habits: a jmp-style policy on the linear layers
    through `apply`, the first layer frozen, `build_update_fn` steps."""
    import types

    half = types.SimpleNamespace(
        param_dtype=jnp.float32, compute_dtype=jnp.bfloat16, output_dtype=jnp.float32
    )
    pax.seed_rng_key(1)
    net = MLP([4, 8, 1]).eval()

    def policy(mod):
        is_linear = isinstance(mod, pax.nn.Linear)
        return pax.apply_mp_policy(mod, mp_policy=half) if is_linear else mod

    net = net.apply(policy)
    net = net.replace(layers=net.layers.set(0, pax.freeze_parameters(net.layers[0])))
    optimizer = opax.adam(1e-2)(net.parameters())
    update = jax.jit(pax.utils.build_update_fn(loss_fn))
    x, y = _data()
    new_net, optimizer, _ = update(net, optimizer, x, y)
    new_net, optimizer, _ = update(new_net, optimizer, x, y)
    np.testing.assert_array_equal(new_net.layers[0].weight, net.layers[0].weight)  # frozen
    assert not np.array_equal(new_net.layers[-1].weight, net.layers[-1].weight)
    assert new_net.layers[-1].weight.dtype == jnp.float32  # master weights stay float32


class ConvNet(pax.Module):  # an MNIST CNN in PAX v0.4.3's conv, batch-norm and pool spellings
    def __init__(self):
        super().__init__()
        self.conv1 = pax.nn.Conv2D(1, 8, 3)
        self.bn1 = pax.nn.BatchNorm2D(8, True, True, 0.9)
        self.conv2 = pax.nn.Conv2D(8, 8, 3, 1, 1, "VALID")
        self.bn2 = pax.nn.BatchNorm2D(8, True, True, 0.9)
        self.fc = pax.nn.Linear(6 * 6 * 8, 10)

    def __call__(self, x):
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = pax.nn.max_pool(x, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")  # 28 -> 14
        x = jax.nn.relu(self.bn2(self.conv2(x)))  # 14 -> 12
        # a short tuple covers the trailing axes (H, W, C), as in PAX and Haiku
        x = pax.nn.avg_pool(x, window_shape=(2, 2, 1), strides=(2, 2, 1), padding="VALID")  # 12->6
        x = jnp.reshape(x, (x.shape[0], -1))
        return self.fc(x)


def cnn_loss_fn(model: ConvNet, x, y):
    model, logits = pax.module_and_value(model)(x)
    log_pr = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.mean(jnp.sum(jax.nn.one_hot(y, 10) * log_pr, axis=-1))
    return loss, (loss, model)


def test_mnist_cnn_with_conv_batchnorm_and_pooling_trains():
    pax.seed_rng_key(3)
    net = ConvNet()
    optimizer = opax.adam(1e-2)(net.parameters())
    update = jax.jit(pax.utils.build_update_fn(cnn_loss_fn))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 28, 28, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, size=(8,)), jnp.int32)
    assert net.conv1.weight.shape == (3, 3, 1, 8)  # HWIO, as PAX
    new_net, optimizer, first = update(net, optimizer, x, y)
    for _ in range(4):
        new_net, optimizer, loss = update(new_net, optimizer, x, y)
    assert float(loss) < 0.5 * float(first)
    # training mode folded batch statistics into the running averages; eval mode reads them
    assert not np.array_equal(new_net.bn1.ema_mean.averages, net.bn1.ema_mean.averages)
    logits = new_net.eval()(x)
    assert logits.shape == (8, 10) and np.all(np.isfinite(logits))


class CausalSelfAttention(pax.nn.MultiHeadAttention):  # pax.nets.Transformer's, v0.4.3
    def __call__(self, query, key=None, value=None, mask=None):
        key = key if key is not None else query
        value = value if value is not None else query
        seq_len = query.shape[1]
        causal_mask = np.tril(np.ones((seq_len, seq_len)))
        mask = mask * causal_mask if mask is not None else causal_mask
        return super().__call__(query, key, value, mask)


class DenseBlock(pax.Module):
    def __init__(self, in_dim, init_scale, widening_factor=4):
        super().__init__()
        initializer = jax.nn.initializers.variance_scaling(
            init_scale, mode="fan_in", distribution="normal"
        )
        self.fc1 = pax.nn.Linear(in_dim, in_dim * widening_factor, w_init=initializer)
        self.fc2 = pax.nn.Linear(in_dim * widening_factor, in_dim, w_init=initializer)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class TransformerLM(pax.Module):  # examples/transformer/model.py, with pax.nets.Transformer inlined
    def __init__(self, vocab_size, hidden_dim, num_heads, num_layers):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = pax.nn.Embed(
            vocab_size,
            hidden_dim,
            w_init=jax.nn.initializers.variance_scaling(1.0, mode="fan_out", distribution="normal"),
        )
        init_scale = 2.0 / num_layers
        layers = []
        for _ in range(num_layers):
            layers.append(
                {
                    "attention": CausalSelfAttention(
                        num_heads=num_heads,
                        key_size=hidden_dim // num_heads,
                        w_init_scale=init_scale,
                    ),
                    "attn_layer_norm": pax.nn.LayerNorm(hidden_dim, -1, True, True),
                    "dense_layer_norm": pax.nn.LayerNorm(hidden_dim, -1, True, True),
                    "dense_block": DenseBlock(hidden_dim, init_scale),
                }
            )
        self.layers = layers
        self.layer_norm_output = pax.nn.LayerNorm(hidden_dim, -1, True, True)
        self.output = pax.nn.Linear(hidden_dim, vocab_size)

    def __call__(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = h + layer["attention"](layer["attn_layer_norm"](h))
            h = h + layer["dense_block"](layer["dense_layer_norm"](h))
        return self.output(self.layer_norm_output(h))


def test_transformer_lm_example_trains_and_is_causal():
    pax.seed_rng_key(7)
    net = TransformerLM(vocab_size=20, hidden_dim=32, num_heads=2, num_layers=2)
    optimizer = opax.chain(opax.clip_by_global_norm(1.0), opax.adam(3e-3))(net.parameters())
    rng = np.random.default_rng(0)
    batch = jnp.asarray(rng.integers(0, 20, size=(4, 9)), jnp.int32)  # seq 8 + 1 target

    def loss_fn(model, batch):  # examples/transformer/train.py
        inputs, targets = batch[:, :-1], batch[:, 1:]
        model, logits = pax.module_and_value(model)(inputs)
        log_pr = jax.nn.log_softmax(logits, axis=-1)
        targets = jax.nn.one_hot(targets, num_classes=model.vocab_size)
        return -jnp.mean(jnp.sum(targets * log_pr, axis=-1)), model

    @jax.jit
    def update_fn(model, optimizer, batch):
        (loss, model), grads = pax.value_and_grad(loss_fn, has_aux=True)(model, batch)
        params = model.parameters()
        optimizer, updates = pax.module_and_value(optimizer)(grads, params)
        model = model.update_parameters(params.map(jax.lax.sub, updates))
        return model, optimizer, loss

    losses = []
    for _ in range(5):
        net, optimizer, loss = update_fn(net, optimizer, batch)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    # causal mask: changing the last token leaves every earlier position's logits unchanged
    x = batch[:1, :-1]
    forward = jax.jit(lambda model, x: model(x))
    a, b = forward(net, x), forward(net, x.at[0, -1].set((x[0, -1] + 1) % 20))
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[0, -1], b[0, -1])
