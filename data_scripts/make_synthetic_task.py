#!/usr/bin/env python
"""Write the embedded synthetic task in MSD layout: python data_scripts/make_synthetic_task.py [--flavour mri|ct|mri4d] [--data-dir DIR]

A thin door: all logic lives in mednext_lite.data (see mednext_lite/data/commands.py).
"""

import sys

from mednext_lite.data.commands import synthesize_main

if __name__ == "__main__":
    sys.exit(synthesize_main())
