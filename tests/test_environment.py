import pytest
import tensorflow as tf

from helpers.environment import require


def test_current_versions_pass():
    require(keras="3.8", tensorflow="2.16")  # TF 2.21 / Keras 3.15: no error
    assert tf.keras.__version__.startswith("3.")


def test_too_old_names_the_package_and_the_fix():
    with pytest.raises(RuntimeError, match=r"needs keras >= 99\.0, but .* restart the runtime and, before "
                                           r"anything imports TensorFlow, run  from helpers.colab import "
                                           r"install_tested_keras; install_tested_keras\(\)"):
        require(keras="99.0")
    with pytest.raises(RuntimeError, match=r"needs tensorflow >= 3.1, .* pip install -U 'tensorflow>=3.1'"):
        require(tensorflow="3.1")
