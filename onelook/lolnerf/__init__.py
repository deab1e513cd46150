"""Using trained LOLNeRF models: `Reconstructor.from_run(RUN_DIR).fit(photo)` -> a `Reconstruction`."""

from onelook.lolnerf.reconstructor import Reconstruction, Reconstructor

__all__ = ["Reconstruction", "Reconstructor"]
