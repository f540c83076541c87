#!/usr/bin/env python
"""Download, verify (MD5) and safely extract an MSD task: python data_scripts/download_msd.py Hippocampus [--data-dir DIR]

A thin door: all logic lives in mednext_lite.data (see mednext_lite/data/commands.py).
"""

import sys

from mednext_lite.data.commands import download_main

if __name__ == "__main__":
    sys.exit(download_main())
