"""Using a trained RealFusion run: `RealFusionResult.from_run(RUN_DIR)` renders, orbits and meshes it."""

from onelook.realfusion.result import RealFusionResult

__all__ = ["RealFusionResult"]
