"""A pretrained ImageNet classifier, or, where its weights cannot be downloaded, a labelled stand-in.

Readers online get the real ImageNet weights through the ordinary Keras call. On a machine
without network access (CI, an offline classroom) the download fails; the book then uses the
same architecture with seeded weights so that every later cell still runs.
"""
import contextlib
import io

import numpy as np
import tensorflow as tf

OFFLINE_NOTE = ("Offline: the ImageNet weights could not be downloaded, so this run uses a "
                "deterministic stand-in (same architecture, seeded weights); its labels are "
                "meaningless.")


def is_download_failure(error):
    """True for the error Keras raises when a `get_file` download fails (a plain `Exception`)."""
    text = str(error)
    return (isinstance(error, OSError) or text.startswith("URL fetch failure")
            or text.startswith("HTTP Error") or "Name or service not known" in text)


def pretrained_or_standin(build=tf.keras.applications.MobileNet, seed=0):
    """`build()` with its default ImageNet weights, or a seeded stand-in if they can't be fetched.

    Returns `(model, weights)` where `weights` is "imagenet" or "offline stand-in". Keras's
    download messages are kept out of the output; any error other than a failed download is
    raised as usual.
    """
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            return build(), "imagenet"
    except Exception as error:  # Keras raises a bare Exception for a failed download
        if not is_download_failure(error):
            raise
    return standin(build, seed), "offline stand-in"


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


def top5(probabilities, labels):
    """The 5 most likely labels for the first image; `labels[0]` is 'background', as in the study note."""
    order = np.argsort(np.asarray(probabilities)[0])[::-1][:5]
    return labels[order + 1]
