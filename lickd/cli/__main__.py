"""``python -m lickd.cli ...``: the same as the ``lickd`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
