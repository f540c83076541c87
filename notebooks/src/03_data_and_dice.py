# %% [markdown]
# # 03 · Data, patches and Dice: what the network sees and how it is scored
#
# **What you will learn**
# - patches, augmentation, sliding windows and Dice (this lesson is being written).

# %% [parameters]
size = "class"  # "ci": what CI runs; "class": about 5 minutes on a 2-core CPU; "gpu": one GPU
output_dir = "runs/03_data_and_dice"
seed = 0
device = "auto"

# %%
from mednext_lite.notebooks import Lesson

lesson = Lesson(output_dir, seed=seed, device=device)
lesson.record(size=size)
