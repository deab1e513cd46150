"""Files shipped with the package: the demo LOLNeRF model and its examples, and the object prior (a small
diffusion model trained on `onelook synth --category objects`) with its examples, for the app's two tabs."""

from pathlib import Path

ASSETS = Path(__file__).parent
DEMO_MODEL = ASSETS / "demo_lolnerf"  # rebuilt by `python -m onelook.assets`
EXAMPLES = ASSETS / "examples"  # the demo model's held-out identities and their keypoints
OBJECT_PRIOR = ASSETS / "object_prior"  # a diffusers folder; rebuilt by `python -m onelook.assets.build_object_prior`
OBJECT_EXAMPLES = ASSETS / "object_examples"  # front photos of objects the prior never saw
