"""``python -m wskit_trio serve|contract ...`` (see ``wskit_trio._cli``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
