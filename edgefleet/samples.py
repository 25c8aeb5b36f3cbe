"""Sample data and models for the demo, tests and benchmarks: scikit-learn's bundled digits (no download)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Digits:
    """8x8 grey digits scaled to [0, 1], split 70/30 with a fixed seed."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    def write(self, folder: Path, calibration_samples: int = 200) -> tuple[Path, Path]:
        """`calib.npy` (inputs) and `val.npz` (`x`, `y`) as `edgefleet convert` reads them."""
        folder.mkdir(parents=True, exist_ok=True)
        calib, val = folder / "calib.npy", folder / "val.npz"
        np.save(calib, self.x_train[:calibration_samples])
        np.savez(val, x=self.x_val, y=self.y_val)
        return calib, val


def digits(image: bool = True, channels_first: bool = False) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8) if channels_first else x.reshape(-1, 8, 8, 1)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return Digits(xt, yt.astype(np.int64), xv, yv.astype(np.int64))


def train_keras_cnn(path: Path, data: Digits, epochs: int = 12, width: int = 16) -> Path:
    """A small CNN (two 3x3 convolutions, a dense layer) trained on digits, saved as `.keras`."""
    from converter.sources import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="pixels"),
        keras.layers.Conv2D(width, 3, activation="relu"),
        keras.layers.Conv2D(width, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(2 * width, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path
