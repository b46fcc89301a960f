"""Test-wide settings: one torch thread (tiny models gain nothing from more, and 2-core CI machines
slow down sharply when several processes oversubscribe the cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
