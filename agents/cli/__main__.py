"""``python -m agents.cli`` runs the ``mara`` command."""

import sys

from agents.cli import main

if __name__ == "__main__":
    sys.exit(main())
