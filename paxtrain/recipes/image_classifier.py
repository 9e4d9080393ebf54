"""A small convolutional classifier: conv -> batch norm -> relu -> pool blocks, then a linear head.

    paxtrain fit image_classifier    # from any directory: the config in paxtrain/configs/

Trains on scikit-learn's 8x8 digits by default (no download), or on MNIST IDX files with
`data.source=mnist data.path=/dir/with/idx/files`, and reports test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

import paxtrain as pax
import paxtrain.nn as nn


def pool(x: jax.Array) -> jax.Array:
    """2x2 max pooling; "SAME" padding rounds odd sizes up (7 -> 4), so any image size works.

    Example:
        >>> pool(jnp.ones((1, 7, 7, 3))).shape
        (1, 4, 4, 3)
    """
    return nn.max_pool(x, 2, padding="SAME")


class ImageClassifier(pax.Module):
    """Blocks of 3x3 convolution, batch norm, relu and 2x2 max pooling, then dropout and a
    linear layer on the flattened features.

    Batch norm updates its running statistics and dropout its key in training mode, so train
    through `pax.purecall(model.loss, batch)`; `model.eval()` uses the running statistics.

    Args:
      num_classes: number of labels (given by the data's `info`).
      image_shape: (height, width, channels) of the inputs (given by the data's `info`).
      channels: output channels of each block; each block halves the height and width.
      dropout: dropout rate before the linear layer.
      kernel_size: convolution kernel size.

    Example:
        >>> model = ImageClassifier(num_classes=10, image_shape=(8, 8, 1), channels=(4, 8))
        >>> images = jnp.zeros((8, 8, 8, 1))  # 8 images of 8x8 pixels
        >>> model.eval()(images).shape  # in eval mode nothing changes
        (8, 10)
        >>> batch = {"images": images, "labels": jnp.arange(8)}
        >>> model, (loss, metrics) = pax.purecall(model.loss, batch)
        >>> sorted(metrics)
        ['accuracy']
    """

    def __init__(
        self,
        num_classes: int,
        image_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        dropout: float = 0.1,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.num_classes, self.image_shape = num_classes, tuple(image_shape)
        height, width, in_channels = image_shape
        blocks = []
        for out_channels in channels:
            blocks += [
                nn.Conv2D(in_channels, out_channels, kernel_size, with_bias=False),
                nn.BatchNorm2D(out_channels),
                jax.nn.relu,
                pool,
            ]
            in_channels = out_channels
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(height * width * in_channels, num_classes)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits [batch, num_classes] of images [batch, height, width, channels]."""
        features = self.features(images)
        return self.head(self.dropout(features.reshape(features.shape[0], -1)))

    def loss(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean cross-entropy of the labels, and the accuracy of the most likely class."""
        logits = self(batch["images"])
        labels = batch["labels"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, {"accuracy": accuracy}
