"""Dataparser registrations (entry-point group `nerfstudio.dataparser_configs`); imports nothing heavy."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from onelook.data.dataparser import OnelookDataParserConfig
from onelook.data.image_dataparser import ObjectImageDataParserConfig

onelook_dataparser = DataParserSpecification(
    config=OnelookDataParserConfig(),
    description="Single-view image collections prepared by `onelook prepare` (LOLNeRF).",
)

object_image_dataparser = DataParserSpecification(
    config=ObjectImageDataParserConfig(),
    description="One photo of an object with its reference camera (RealFusion).",
)
