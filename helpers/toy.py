"""The toy model, data and training loop of chapters 1-4 (the study note's, fixed for Keras 3).

The chapters type this code in cells: `Net` in chapter 1, `toy_dataset`, `train_step` and
`train_and_checkpoint` in chapter 2. tests/test_toy.py checks that each cell equals its function
here, so change both together.
"""
import tensorflow as tf


class Net(tf.keras.Model):
    """A simple linear model."""

    def __init__(self):
        super(Net, self).__init__()
        self.l1 = tf.keras.layers.Dense(5)

    def build(self, input_shape):
        # The Keras 3 fix: create l1's variables eagerly, so a restore can fill them.
        # Without this method a fresh Net restores its bias but silently not its kernel.
        self.l1.build(input_shape)

    def call(self, x):
        return self.l1(x)


def toy_dataset():
    """x = 0..9 with labels x * 5 + [0, 1, 2, 3, 4], repeated forever, in batches of 2."""
    inputs = tf.range(10.)[:, None]
    labels = inputs * 5. + tf.range(5.)[None, :]
    return tf.data.Dataset.from_tensor_slices(
        dict(x=inputs, y=labels)).repeat().batch(2)


def train_step(net, example, optimizer):
    """Trains `net` on `example` using `optimizer`."""
    with tf.GradientTape() as tape:
        output = net(example['x'])
        loss = tf.reduce_mean(tf.abs(output - example['y']))
    variables = net.trainable_variables
    gradients = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    return loss


def train_and_checkpoint(net, manager, steps=50):
    """The study note's loop: restore the latest checkpoint, train, save every 10 steps.

    `step`, `optimizer` and `iterator` are read from `manager.checkpoint` (the study note
    used globals). Returns the restore status and the loss of every step.
    """
    ckpt = manager.checkpoint
    status = ckpt.restore(manager.latest_checkpoint)
    if manager.latest_checkpoint:
        print("Restored from {}".format(manager.latest_checkpoint))
    else:
        print("Initializing from scratch.")

    losses = []
    for _ in range(steps):
        example = next(ckpt.iterator)
        loss = train_step(net, example, ckpt.optimizer)
        losses.append(float(loss))
        ckpt.step.assign_add(1)
        if int(ckpt.step) % 10 == 0:
            save_path = manager.save()
            print("Saved checkpoint for step {}: {}".format(int(ckpt.step), save_path))
            print("loss {:1.2f}".format(loss.numpy()))
    return status, losses


def training_objects(directory, max_to_keep=3):
    """Chapter 2's objects, built, under a `CheckpointManager` writing to `directory`.

    Returns `(net, manager)`; `manager.checkpoint` tracks step, optimizer, net, iterator.
    Model and optimizer are built first, so a restore lands at once and can be asserted.
    """
    net = Net()
    net.build((None, 1))
    opt = tf.keras.optimizers.Adam(0.1)
    opt.build(net.trainable_variables)
    iterator = iter(toy_dataset())
    ckpt = tf.train.Checkpoint(step=tf.Variable(1), optimizer=opt, net=net,
                               iterator=iterator)
    manager = tf.train.CheckpointManager(ckpt, directory, max_to_keep=max_to_keep)
    return net, manager
