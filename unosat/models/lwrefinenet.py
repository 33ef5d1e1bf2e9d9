"""Light-Weight RefineNet (Nekrasov et al., BMVC 2018) on the MobileNetV2 encoder: the UNOSAT team's model.

The decoder refines top-down, from the coarsest features to the 1/4-resolution ones. For an input
``(N, C, H, W)`` and the encoder features named by their channels (see :mod:`unosat.models.mobilenetv2`):

- 1/32: ``relu6(lateral_320(f320) + lateral_160(f160))`` -> ``crp_1_32`` -> ``adapt_1_32`` -> bilinear up
  to the size of f96;
- 1/16: ``relu6(lateral_64(f64) + lateral_96(f96) + top)`` -> ``crp_1_16`` -> ``adapt_1_16`` -> up to f32;
- 1/8: ``relu6(top + lateral_32(f32))`` -> ``crp_1_8`` -> ``adapt_1_8`` -> up to f24;
- 1/4: ``relu6(lateral_24(f24) + top)`` -> ``crp_1_4`` -> ``classifier`` (3x3 conv with bias).

Every ``lateral_*`` and ``adapt_*`` is a 1x1 conv without bias; ``crp_*`` are :class:`ChainedResidualPooling`.
All decoder maps have :data:`DECODER_CHANNELS` = 256 channels. Upsampling goes to the size of the next finer
feature map (not a fixed factor of 2), so any input size works. The intermediate bilinear upsampling uses
``align_corners=True`` and the sums are in the reference order, so a checkpoint of the UNOSAT team's
implementation (:mod:`unosat.models.reference_checkpoint`) computes the same logits here.

**Output stride 4** (``output_stride=4``, the original layout): the logits come out at 1/4 of the input
size; :meth:`LWRefineNet.forward` interpolates them to the input size (``bicubic`` by default, as the UNOSAT
team did, ``align_corners=False``). At 10 m a building is 1-5 pixels: logits 4 pixels apart cannot draw it.

**Output stride 1** (``output_stride=1``, the default of ``conf/model/lwrefinenet.yaml``): the 1/4 level does not
classify; two more refinement levels follow, with ``fine_channels = (c2, c1)`` channels (64, 32 by default):

- 1/4 -> 1/2: ``crp_1_4`` output -> ``adapt_1_4`` (1x1, 256 -> c2) -> bilinear up to the size of f16;
- 1/2: ``relu6(lateral_16(f16) + top)`` (f16: the first stage's output, 16 channels at 1/2, computed from the
  stem) -> ``crp_1_2`` -> ``adapt_1_2`` (1x1, c2 -> c1) -> bilinear up to the input size;
- 1/1: ``relu6(input_branch(x) + top)`` -> ``crp_1_1`` -> ``classifier_1_1`` (3x3 conv with bias) -> logits
  (N, num_classes, H, W), no interpolation.

``input_branch`` is a shallow convolution branch on the input itself: (3x3 conv without bias, BN, ReLU6) twice,
``in_channels`` -> c1 -> c1; it is what sees single pixels. The stride-4 ``classifier`` does not exist at
stride 1: every other tensor is shared, so the UNOSAT team's checkpoints load into the shared layers of a
stride-1 model (:func:`unosat.models.reference_checkpoint.load_reference_state_dict`; the new tensors are
listed by :func:`new_full_resolution_keys`).

=====  ========================  =============================================  ======================
level  modules                   input                                          512 x 512 input
=====  ========================  =============================================  ======================
1/32   crp_1_32, adapt_1_32      lateral_320(f320) + lateral_160(f160)          256 @ 16
1/16   crp_1_16, adapt_1_16      lateral_64(f64) + lateral_96(f96) + up         256 @ 32
1/8    crp_1_8, adapt_1_8        up + lateral_32(f32)                           256 @ 64
1/4    crp_1_4, then classifier  lateral_24(f24) + up                           256 @ 128; logits 2 @ 128
       (stride 4) or adapt_1_4
1/2    crp_1_2, adapt_1_2        lateral_16(f16) + up (stride 1 only)           64 @ 256
1/1    crp_1_1, classifier_1_1   input_branch(x) + up (stride 1 only)           32 @ 512; logits 2 @ 512
=====  ========================  =============================================  ======================

Parameters for 3 input bands and 2 classes: stride 4: 3,240,770 (encoder 1,812,800, decoder 1,427,970, of
which each chained residual pooling block holds 262,144); stride 1 with the default fine channels: 3,286,882
(the stride-4 ``classifier``'s 4,610 removed; 50,722 added: ``adapt_1_4`` 16,384, ``lateral_16`` 1,024,
``crp_1_2`` 16,384, ``adapt_1_2`` 2,048, ``input_branch`` 10,208, ``crp_1_1`` 4,096, ``classifier_1_1`` 578).
:attr:`LWRefineNet.size_divisor` = 32: input sides that are multiples of it give exact 2x steps between
levels; other sizes work (every upsampling goes to the size of the finer map).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.init import init_reference_
from unosat.models.mobilenetv2 import ConvBN, MobileNetV2Encoder

DECODER_CHANNELS = 256
CRP_STAGES = 4
CRP_POOL_SIZE = 5
UPSAMPLE_MODES = ("bicubic", "bilinear")
OUTPUT_STRIDES = (1, 4)
FINE_CHANNELS = (64, 32)  # widths of the 1/2 and 1/1 levels at output stride 1
SIZE_DIVISOR = 32  # the MobileNetV2 encoder's deepest stride


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear (``align_corners=True``, as the reference) resize of (N, C, h, w) to the (H, W) of ``like``."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class ChainedResidualPooling(nn.Module):
    """Light-weight chained residual pooling: (N, C, H, W) -> (N, C, H, W).

    ``top = x``; then ``stages`` times: ``top = convs[i](maxpool_5x5_stride_1(top))``, ``x = x + top``.
    The 1x1 convs have no bias: ``stages * C * C`` parameters (262,144 for 4 x 256 x 256).
    """

    def __init__(self, channels: int, stages: int = CRP_STAGES) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=CRP_POOL_SIZE, stride=1, padding=CRP_POOL_SIZE // 2)
        self.convs = nn.ModuleList(conv1x1(channels, channels) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = top + x
        return x


class LWRefineNetDecoder(nn.Module):
    """The Light-Weight RefineNet decoder over the eight MobileNetV2 features (see the module docstring).

    Args:
        encoder_channels: ``MobileNetV2Encoder.stage_channels`` (stem first, 8 entries).
        num_classes: output channels of the classifier.
        output_stride: 4 (the original layout, ``classifier`` at 1/4) or 1 (levels at 1/2 and 1/1,
            ``classifier_1_1`` at the input resolution).
        fine_channels: widths of the 1/2 and 1/1 levels (output stride 1 only).
        in_channels: input bands, for ``input_branch`` (output stride 1 only).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        num_classes: int,
        output_stride: int = 4,
        fine_channels: Sequence[int] = FINE_CHANNELS,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 8:
            raise ValueError(f"expected the 8 MobileNetV2 feature channels, got {tuple(encoder_channels)}")
        if output_stride not in OUTPUT_STRIDES:
            raise UnosatError(f"model output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        _, c16, c24, c32, c64, c96, c160, c320 = encoder_channels
        d = DECODER_CHANNELS
        self.output_stride = output_stride
        # Lateral 1x1 convs: each encoder feature -> 256 channels (named after the MobileNetV2 channels).
        self.lateral_320 = conv1x1(c320, d)
        self.lateral_160 = conv1x1(c160, d)
        self.lateral_96 = conv1x1(c96, d)
        self.lateral_64 = conv1x1(c64, d)
        self.lateral_32 = conv1x1(c32, d)
        self.lateral_24 = conv1x1(c24, d)
        # One chained residual pooling per level, then a 1x1 adapter before upsampling to the next level.
        self.crp_1_32 = ChainedResidualPooling(d)
        self.crp_1_16 = ChainedResidualPooling(d)
        self.crp_1_8 = ChainedResidualPooling(d)
        self.crp_1_4 = ChainedResidualPooling(d)
        self.adapt_1_32 = conv1x1(d, d)
        self.adapt_1_16 = conv1x1(d, d)
        self.adapt_1_8 = conv1x1(d, d)
        if output_stride == 4:
            self.classifier = nn.Conv2d(d, num_classes, kernel_size=3, padding=1, bias=True)
        else:
            fine = tuple(int(c) for c in fine_channels)
            if len(fine) != 2 or min(fine) < 1:
                raise UnosatError(
                    f"model fine_channels must be 2 positive widths (1/2 and 1/1 levels), got {list(fine)}"
                )
            c2, c1 = fine
            self.adapt_1_4 = conv1x1(d, c2)
            self.lateral_16 = conv1x1(c16, c2)
            self.crp_1_2 = ChainedResidualPooling(c2)
            self.adapt_1_2 = conv1x1(c2, c1)
            self.input_branch = nn.Sequential(
                ConvBN(in_channels, c1, kernel_size=3), ConvBN(c1, c1, kernel_size=3)
            )
            self.crp_1_1 = ChainedResidualPooling(c1)
            self.classifier_1_1 = nn.Conv2d(c1, num_classes, kernel_size=3, padding=1, bias=True)
        init_reference_(self)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor | None = None) -> torch.Tensor:
        """The 8 encoder features (stem first) [and the input image (N, in_channels, H, W), needed at output
        stride 1] -> logits: (N, num_classes, H/4, W/4) at the size of f24 (output stride 4), or
        (N, num_classes, H, W) (output stride 1)."""
        _, f16, f24, f32, f64, f96, f160, f320 = features
        top = F.relu6(self.lateral_320(f320) + self.lateral_160(f160))  # 1/32
        top = upsample_to(self.adapt_1_32(self.crp_1_32(top)), f96)
        top = F.relu6(self.lateral_64(f64) + self.lateral_96(f96) + top)  # 1/16
        top = upsample_to(self.adapt_1_16(self.crp_1_16(top)), f32)
        top = F.relu6(top + self.lateral_32(f32))  # 1/8
        top = upsample_to(self.adapt_1_8(self.crp_1_8(top)), f24)
        top = F.relu6(self.lateral_24(f24) + top)  # 1/4
        if self.output_stride == 4:
            return self.classifier(self.crp_1_4(top))
        if image is None:
            raise ValueError(
                "the output-stride-1 decoder needs the input image for its full-resolution branch"
            )
        top = upsample_to(self.adapt_1_4(self.crp_1_4(top)), f16)
        top = F.relu6(self.lateral_16(f16) + top)  # 1/2
        fine = self.input_branch(image)
        top = upsample_to(self.adapt_1_2(self.crp_1_2(top)), fine)
        top = F.relu6(fine + top)  # 1/1
        return self.classifier_1_1(self.crp_1_1(top))


class LWRefineNet(nn.Module):
    """Light-Weight RefineNet with a MobileNetV2 encoder (see the module docstring).

    Args:
        in_channels: input bands.
        num_classes: output classes (2: background, building).
        upsample_mode: how the 1/4-resolution logits are brought to the input size at output stride 4, one of
            :data:`UPSAMPLE_MODES` (``bicubic``: the UNOSAT team's choice); unused at output stride 1.
        output_stride: 4 (the original layout; the constructor's default, so that checkpoints saved before
            this argument existed rebuild as they were trained) or 1 (full-resolution logits; the default of
            ``conf/model/lwrefinenet.yaml``).
        fine_channels: widths of the 1/2 and 1/1 refinement levels at output stride 1.

    Attributes:
        encoder: :class:`~unosat.models.mobilenetv2.MobileNetV2Encoder`.
        decoder: :class:`LWRefineNetDecoder`.
        size_divisor: 32, the input side multiple at which every level is exactly twice the next coarser.

    CPU inference is several times faster in the channels-last memory format (``model.to(memory_format=
    torch.channels_last)`` and a channels-last input): the 5x5 max pooling of the 1/4-resolution chained residual
    pooling dominates the default layout. The logits are the same.
    """

    size_divisor = SIZE_DIVISOR

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        upsample_mode: str = "bicubic",
        output_stride: int = 4,
        fine_channels: Sequence[int] = FINE_CHANNELS,
    ) -> None:
        super().__init__()
        if upsample_mode not in UPSAMPLE_MODES:
            raise UnosatError(
                f"model upsample_mode {upsample_mode!r} is not one of {', '.join(UPSAMPLE_MODES)}"
            )
        if in_channels is None or in_channels < 1 or num_classes < 1:
            raise UnosatError(
                f"model needs at least one input band and one class, got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        if output_stride not in OUTPUT_STRIDES:
            raise UnosatError(f"model output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.upsample_mode = upsample_mode
        self.output_stride = int(output_stride)
        self.encoder = MobileNetV2Encoder(in_channels)
        self.decoder = LWRefineNetDecoder(
            self.encoder.stage_channels, num_classes, self.output_stride, fine_channels, in_channels
        )

    def forward_quarter(self, x: torch.Tensor) -> torch.Tensor:
        """Output stride 4 only: (N, in_channels, H, W) -> logits (N, num_classes, ceil(H/4), ceil(W/4)),
        before upsampling."""
        if self.output_stride != 4:
            raise ValueError(
                "forward_quarter exists at output stride 4 only; this model's logits are full resolution"
            )
        return self.decoder(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> logits (N, num_classes, H, W)."""
        if self.output_stride == 1:
            return self.decoder(self.encoder(x), x)
        logits = self.forward_quarter(x)
        return F.interpolate(logits, size=x.shape[-2:], mode=self.upsample_mode, align_corners=False)


def new_full_resolution_keys(model: LWRefineNet) -> list[str]:
    """State-dict keys of ``model`` that the original (output stride 4) layout does not have: the 1/2 and 1/1
    levels of an output-stride-1 model (empty at output stride 4). The original's ``decoder.classifier`` is the
    only original tensor an output-stride-1 model lacks."""
    original = set(LWRefineNet(model.in_channels, model.num_classes, output_stride=4).state_dict())
    return sorted(k for k in model.state_dict() if k not in original)
