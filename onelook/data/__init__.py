"""Data: preparing LOLNeRF datasets and RealFusion photos, the synthetic test beds, and nerfstudio's parsers."""

TRANSFORMS = "transforms.json"  # a LOLNeRF dataset's index (`onelook prepare` writes it, the dataparser reads it)
