"""``python -m nodepass URL``: the same as the ``nodepass`` console script."""

from nodepass.cli import main

if __name__ == "__main__":
    main()
