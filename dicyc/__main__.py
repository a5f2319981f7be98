"""``python -m dicyc`` is the same as the ``dicyc`` console script."""

import sys

from dicyc.cli import main

if __name__ == "__main__":
    sys.exit(main())
