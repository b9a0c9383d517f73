#!/usr/bin/env python
"""RS image-text retrieval evaluation; see ``python retrieval.py --help`` and pir_clip/retrieval.py."""
import sys

from pir_clip.retrieval import main

if __name__ == "__main__":
    sys.exit(main())
