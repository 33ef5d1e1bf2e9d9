"""Segmentation models: U-Net, Light-Weight RefineNet, GSCNN and FPN (logits at the input resolution; LW-RefineNet
and GSCNN also in their original 1/4 layout), their encoders, and loading the UNOSAT team's weights.

- :mod:`unosat.models.mobilenetv2`: :class:`MobileNetV2Encoder`, returning all eight stage outputs;
- :mod:`unosat.models.lwrefinenet`: :class:`LWRefineNet` (encoder + :class:`LWRefineNetDecoder`);
- :mod:`unosat.models.unet`: :class:`UNet`, a plain U-Net with logits at the input resolution;
- :mod:`unosat.models.fpn`: :class:`FPN`, a feature pyramid on ResNet-50 with a full-resolution head;
- :mod:`unosat.models.gscnn`: :class:`GSCNN` (Gated Shape CNN: backbone, shape stream, fusion, ASPP, decoder);
- :mod:`unosat.models.aspp`: :class:`ASPP`; :mod:`unosat.models.resnet`: :class:`ResNet` (ResNet-50, dilated);
- :mod:`unosat.models.image_gradient`: :class:`ImageGradient`, the un-normalised band's Sobel magnitude;
- :mod:`unosat.models.reference_checkpoint`: :func:`load_reference_state_dict` for the team's checkpoints;
- :mod:`unosat.models.init`: :func:`init_reference_`, the reference weight initialisation;
- :mod:`unosat.models.outputs`: :func:`segmentation_logits`, the logits of a network's output.
"""

from unosat.models.aspp import ASPP
from unosat.models.fpn import FPN
from unosat.models.gscnn import BACKBONES, GSCNN, GatedConv2d, ShapeStream
from unosat.models.image_gradient import ImageGradient
from unosat.models.init import init_reference_
from unosat.models.lwrefinenet import (
    UPSAMPLE_MODES,
    ChainedResidualPooling,
    LWRefineNet,
    LWRefineNetDecoder,
    new_full_resolution_keys,
)
from unosat.models.mobilenetv2 import MOBILENETV2_STAGES, InvertedResidual, MobileNetV2Encoder, StageSpec
from unosat.models.reference_checkpoint import load_reference_state_dict, reference_key_map
from unosat.models.resnet import ResNet, resnet50
from unosat.models.unet import UNet

__all__ = [
    "ASPP",
    "BACKBONES",
    "FPN",
    "GSCNN",
    "MOBILENETV2_STAGES",
    "UPSAMPLE_MODES",
    "ChainedResidualPooling",
    "GatedConv2d",
    "ImageGradient",
    "InvertedResidual",
    "LWRefineNet",
    "LWRefineNetDecoder",
    "MobileNetV2Encoder",
    "ResNet",
    "ShapeStream",
    "StageSpec",
    "UNet",
    "init_reference_",
    "load_reference_state_dict",
    "new_full_resolution_keys",
    "reference_key_map",
    "resnet50",
]
