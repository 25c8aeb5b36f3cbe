"""Small real models trained on scikit-learn's bundled digits dataset (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.samples import Digits, digits, train_keras_cnn

__all__ = ["Digits", "digits", "train_keras_cnn", "train_keras_regressor", "train_torch_cnn"]


def train_keras_regressor(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((x.shape[1],), name="features"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile("adam", "mse")
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    model.save(path)
    return path


def train_torch_cnn(path: Path, data: Digits, epochs: int = 15, scripted: bool = True) -> Path:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(epochs):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[i : i + 64]), yt[i : i + 64])
            loss.backward()
            opt.step()
    net.eval()
    if scripted:
        module = torch.jit.script(net)
        torch.jit.save(module, str(path))
    else:
        torch.save(net, str(path))
    return path
