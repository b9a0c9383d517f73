"""``python -m pir_clip``: the same as the ``pir-clip`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
