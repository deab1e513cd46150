"""Camera estimation: shared canonical keypoints and per-image cameras from 2D landmarks."""

from onelook.cameras.fit import CameraFit, fit_cameras

__all__ = ["CameraFit", "fit_cameras"]
