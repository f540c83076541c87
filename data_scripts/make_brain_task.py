#!/usr/bin/env python
"""Write the MNI152 brain-tissue task in MSD layout:
python data_scripts/make_brain_task.py [--spacing MM] [--n-train N] [--data-dir DIR]

A thin door: all logic lives in mednext_lite.data (see mednext_lite/data/brain.py; needs nilearn, whose
bundled template it uses).
"""

import sys

from mednext_lite.data.commands import brain_main

if __name__ == "__main__":
    sys.exit(brain_main())
