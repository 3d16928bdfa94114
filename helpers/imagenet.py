"""A pretrained ImageNet classifier, or, where its weights cannot be downloaded, a labelled stand-in.

Readers online, or with the weights already in Keras's cache (`$KERAS_HOME/models/`), get the
real ImageNet weights through the ordinary Keras call. On a machine with neither (an offline
classroom) the download fails; the book then uses the same architecture with seeded weights so
that every later cell still runs. A cached weights file that cannot be read is an error, not
"offline": it names the file to delete.
"""
import contextlib
import io
import os
import urllib.error
from pathlib import Path

import h5py

import numpy as np
import tensorflow as tf

OFFLINE_NOTE = ("Offline: the ImageNet weights could not be downloaded, so this run uses a "
                "deterministic stand-in (same architecture, seeded weights); its labels are "
                "meaningless.")


class CorruptCacheError(OSError):
    """A weights file in Keras's download cache exists but cannot be read."""


def is_download_failure(error):
    """True for the error Keras raises when a `get_file` download fails (a plain `Exception`).

    Not for any `OSError`: h5py raises one for a corrupt cached file, which is no download.
    """
    text = str(error)
    return (isinstance(error, urllib.error.URLError) or text.startswith("URL fetch failure")
            or text.startswith("HTTP Error"))


def keras_cache(subdir="models"):
    """Where `get_file` keeps downloads: `$KERAS_HOME/models`, by default `~/.keras/models`."""
    return Path(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras"))) / subdir


def unreadable_h5_files(folder):
    """The `.h5` files in `folder` that h5py cannot open (truncated downloads, other junk)."""
    bad = []
    for path in sorted(Path(folder).glob("*.h5")):
        try:
            h5py.File(path, "r").close()
        except OSError:
            bad.append(path)
    return bad


def pretrained_or_standin(build=tf.keras.applications.MobileNet, seed=0):
    """`build()` with its default ImageNet weights, or a seeded stand-in if they can't be fetched.

    Returns `(model, weights)` where `weights` is "imagenet" or "offline stand-in". Keras's
    download messages are kept out of the output; a cached weights file that h5py cannot read
    raises `CorruptCacheError` naming it; any other error is raised as usual.
    """
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            return build(), "imagenet"
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if is_download_failure(error):
            return standin(build, seed), "offline stand-in"
        bad = unreadable_h5_files(keras_cache()) if isinstance(error, OSError) else []
        if bad:
            raise CorruptCacheError(
                f"the cached weights file '{bad[0]}' is corrupt ({error}): delete it, and Keras "
                "downloads it again on the next call") from error
        raise


def standin(build=tf.keras.applications.MobileNet, seed=0):
    """`build(weights=None)` with seeded weights and batch-norm statistics.

    Untrained MobileNet has all-zero batch-norm means, so every image scores exactly 1/1000
    for every class; perturbing them gives distinct outputs, so comparisons mean something.
    """
    tf.keras.utils.set_random_seed(seed)
    model = build(weights=None)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.1, shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.1, shape).astype("float32"))
    return model
