"""Shared fixtures: one small training checkpoint, written once per test session."""
import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """Chapter 2's run: 50 seeded steps, checkpoints every 10 steps; returns (manager, losses)."""
    import tensorflow as tf
    from helpers.toy import train_and_checkpoint, training_objects

    tf.keras.utils.set_random_seed(0)
    directory = tmp_path_factory.mktemp("tf_ckpts")
    net, manager = training_objects(str(directory))
    _, losses = train_and_checkpoint(net, manager)
    return manager, losses
