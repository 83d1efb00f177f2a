"""3D Gaussian Splatting trainer built around the DISTWAR rasterizer in ``cuda_rasterizer``."""

__version__ = "0.1.0"
