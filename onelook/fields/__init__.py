"""nerfstudio fields of the methods."""
