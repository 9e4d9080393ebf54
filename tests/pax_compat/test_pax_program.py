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
