"""hpclab: JupyterLab on an HPC compute node, from your laptop, safely."""

__version__ = "0.1.0"
