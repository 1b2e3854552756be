"""Shared pytest setup: one torch thread per worker (the suite runs with pytest -n 2)."""

import torch

torch.set_num_threads(1)
