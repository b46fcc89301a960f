"""treegrpo: tree-structured GRPO and its neighbours for RL post-training of image generators."""

__version__ = "0.1.0"
