"""Entry point for `python -m llamakit` (works from a checkout with PYTHONPATH set, no install needed)."""

from llamakit.cli import main

if __name__ == "__main__":
    main()
