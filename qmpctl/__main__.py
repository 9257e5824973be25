"""Allow ``python -m qmpctl``."""

from qmpctl.cli import main

if __name__ == "__main__":
    main()
