"""Shared pytest setup.

* One torch thread per worker (the suite runs with ``pytest -n 2``).
* A marker per chapter (``ch01`` ... ``ch10``) on the chapter's notebook and on the unit tests of the
  modules it introduces, so that an instructor can run one chapter's checks alone:
  ``make chapter CH=03``, i.e.
  ``pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg -m ch03 tests chapters``.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def critic64():
    """A float64 critic (4 inputs, hidden width 16), 30 inputs, 30 targets and the generator
    (the derivative tests of the torch and numpy backends)."""
    from birl_lite.actor_critic.networks import Critic

    gen = torch.Generator().manual_seed(0)
    critic = Critic(4, 16, gen).double()
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    targets = torch.randn(30, generator=gen, dtype=torch.float64)
    return critic, x, targets, gen


#: test modules of each chapter (the notebook ``chapters/NN_*.ipynb`` is added automatically)
CHAPTER_TESTS = {
    "01": (
        "test_mdp",
        "test_soft",
        "test_kernels",
        "test_envs",
        "test_exercises",
        "test_ch01_claims",
    ),
    "02": ("test_problems", "test_ch02_claims"),
    "03": ("test_hypergradient", "test_ch03_claims"),
    "04": ("test_model_based", "test_ch04_claims"),
    "05": ("test_model_free", "test_ch05_claims"),
    "06": ("test_preference", "test_rlhf_tabular"),
    "07": ("test_ihvp", "test_linear_solve", "test_ch07_claims"),
    "08": ("test_actor_critic", "test_learning", "test_ch08_claims"),
    "09": ("test_experiments",),
    "10": ("test_rlhf_neural",),
}


def pytest_configure(config):
    for chapter in CHAPTER_TESTS:
        config.addinivalue_line("markers", f"ch{chapter}: checks of chapter {int(chapter)}")


def pytest_collection_modifyitems(config, items):
    import pytest

    module_to_chapter = {m: ch for ch, mods in CHAPTER_TESTS.items() for m in mods}
    for item in items:
        path = item.path
        if path.suffix == ".ipynb" and path.parent.name == "chapters":
            chapter = path.name[:2]
        else:
            chapter = module_to_chapter.get(path.stem)
        if chapter is not None:
            item.add_marker(getattr(pytest.mark, f"ch{chapter}"))
