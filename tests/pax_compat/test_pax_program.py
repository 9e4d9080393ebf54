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
    for _ in range(60):
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
    for _ in range(5):
        net_a, opt_a, loss_a = update(net_a, opt_a, x, y)
        grads, (loss_b, net_b) = pax.grad(loss_fn, has_aux=True)(net_b, x, y)
        net_b, opt_b = opax.apply_gradients(net_b, opt_b, grads=grads)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(net_a), jax.tree_util.tree_leaves(net_b)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # all_finite=False keeps the old model and optimizer, as in opax.
    kept, kept_opt = opax.apply_gradients(net_b, opt_b, grads=grads, all_finite=jnp.array(False))
    for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(net_b)):
        np.testing.assert_array_equal(a, b)
