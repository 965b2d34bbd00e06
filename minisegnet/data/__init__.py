"""minisegnet.data: real and synthetic segmentation datasets, nothing downloaded at run time (being written)."""
