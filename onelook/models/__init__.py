"""nerfstudio models of the methods."""
