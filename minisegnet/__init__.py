"""minisegnet: image segmentation from scratch, down to the kernel."""
from . import backend
from .backend import use_impl

__version__ = "0.1.0"
