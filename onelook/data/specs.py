"""Dataparser registrations (entry-point group `nerfstudio.dataparser_configs`); imports nothing heavy."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from onelook.data.dataparser import OnelookDataParserConfig

onelook_dataparser = DataParserSpecification(
    config=OnelookDataParserConfig(),
    description="Single-view image collections prepared by `onelook prepare` (LOLNeRF).",
)
