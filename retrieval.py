#!/usr/bin/env python
"""RS image-text retrieval evaluation, the authors' command line: the same as ``pir-clip retrieval``.

See ``python retrieval.py --help``.
"""
import sys

from pir_clip.cli import retrieval_main

if __name__ == "__main__":
    sys.exit(retrieval_main())
