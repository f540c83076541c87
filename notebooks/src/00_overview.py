# %% [markdown]
# # 00 · MedNeXt at a glance: the whole network
#
# **What you will learn**
# - the whole network in one figure (this lesson is being written).

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about 5 minutes on a 2-core CPU; "gpu": one GPU
output_dir = "runs/00_overview"
seed = 0
device = "auto"

# %%
from mednext_lite.notebooks import Lesson

lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size)
