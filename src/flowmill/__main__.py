"""`python -m flowmill`: the same as the `flowmill` command."""

from .cli import main

if __name__ == "__main__":
    main()
