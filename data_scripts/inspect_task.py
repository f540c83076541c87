#!/usr/bin/env python
"""Validate a task, print its summary and save a montage PNG: python data_scripts/inspect_task.py data/Task90_SyntheticMRI

A thin door: all logic lives in mednext_lite.data (see mednext_lite/data/commands.py).
"""

import sys

from mednext_lite.data.commands import inspect_main

if __name__ == "__main__":
    sys.exit(inspect_main())
