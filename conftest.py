"""Every kernel and helper test of this session runs in the environment the stored outputs came
from (scripts/notebook_kernel.py: kernel start-up file, a scratch TMPDIR, the offline Keras cache)."""
from scripts.notebook_kernel import prepare_environment

prepare_environment()
