"""Segmentation models: the MobileNetV2 encoder, Light-Weight RefineNet, and loading the UNOSAT team's weights.

- :mod:`unosat.models.mobilenetv2`: :class:`MobileNetV2Encoder`, returning all eight stage outputs;
- :mod:`unosat.models.lwrefinenet`: :class:`LWRefineNet` (encoder + :class:`LWRefineNetDecoder`);
- :mod:`unosat.models.reference_checkpoint`: :func:`load_reference_state_dict` for the team's checkpoints;
- :mod:`unosat.models.init`: :func:`init_reference_`, the reference weight initialisation.
"""

from unosat.models.init import init_reference_
from unosat.models.lwrefinenet import UPSAMPLE_MODES, ChainedResidualPooling, LWRefineNet, LWRefineNetDecoder
from unosat.models.mobilenetv2 import MOBILENETV2_STAGES, InvertedResidual, MobileNetV2Encoder, StageSpec
from unosat.models.reference_checkpoint import load_reference_state_dict, reference_key_map

__all__ = [
    "MOBILENETV2_STAGES",
    "UPSAMPLE_MODES",
    "ChainedResidualPooling",
    "InvertedResidual",
    "LWRefineNet",
    "LWRefineNetDecoder",
    "MobileNetV2Encoder",
    "StageSpec",
    "init_reference_",
    "load_reference_state_dict",
    "reference_key_map",
]
