"""Small modules shared by the core tests."""

import jax
import jax.numpy as jnp

import paxtrain as pax


class Counter(pax.Module):
    def __init__(self):
        super().__init__()
        self.register_state("count", jnp.array(0))

    def __call__(self, x):
        self.count = self.count + 1
        return x


class Linear(pax.Module):
    def __init__(self, in_dim, out_dim, name=None):
        super().__init__(name=name)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_parameter("weight", jax.random.normal(pax.next_rng_key(), (in_dim, out_dim)))
        self.register_parameter("bias", jnp.zeros((out_dim,)))

    def __call__(self, x):
        return x @ self.weight + self.bias


class SeededLinear(pax.Module):
    """A linear layer whose scaled-normal weight comes from its own seed, not the global key."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0):
        super().__init__()
        weight = jax.random.normal(jax.random.PRNGKey(seed), (in_dim, out_dim)) / in_dim**0.5
        self.register_parameter("weight", weight)
        self.register_parameter("bias", jnp.zeros(out_dim))

    def __call__(self, x):
        return x @ self.weight + self.bias


class MLP(pax.Module):
    """Linear layers in a list plus a call counter: parameters, an int state, submodules."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes = tuple(sizes)
        self.layers = [Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.counter = Counter()

    def __call__(self, x):
        x = self.counter(x)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
