"""``python -m birl_lite.rlhf``: see :func:`birl_lite.rlhf.loop.main`."""

from .loop import main

if __name__ == "__main__":
    main()
