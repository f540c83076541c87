"""mednext_lite: an exact, readable MedNeXt for 2D and 3D medical image segmentation."""

__version__ = "0.1.0"
