"""Gated Shape CNN (Takikawa et al., ICCV 2019): a regular segmentation stream and a shape stream that
predicts building edges, joined by gated convolutions and fused before ASPP.

For an input ``x`` (N, in_channels, H, W), normalised as the dataset's band recipe says:

1. **Regular stream.** A backbone (:data:`BACKBONES`) gives features at several strides: a MobileNetV2 (the
   encoder of Light-Weight RefineNet, deepest features at 1/32) or a ResNet-50 dilated to output stride 8.
2. **Shape stream** (:class:`ShapeStream`), at full resolution (H, W). An early high-resolution feature is
   projected (1x1) and upsampled; then three times: a residual block, a 1x1 reduction of the channels, and a
   gated convolution (:class:`GatedConv2d`) whose gate sees a 1x1 projection to one channel of a deeper
   backbone stage, upsampled to (H, W). A last 1x1 conv gives the **edge logits** (N, 1, H, W).
3. **Image gradient** (:mod:`unosat.models.image_gradient`): the Sobel magnitude of the smoothed band
   ``gradient_band`` in dB, computed from the *un-normalised* band (``input_recipe``), detached.
4. **Fusion.** ``sigmoid(edge_logits)`` and the gradient map -> 1x1 conv -> sigmoid: the fused edge map
   (N, 1, H, W), fed to an extra branch of the ASPP (:mod:`unosat.models.aspp`) on the deepest features.
5. **Decoder** (DeepLabV3+ style): the ASPP output, upsampled to the 1/4-stride features, concatenated with
   a 1x1 reduction of those, two 3x3 conv-BN-ReLU. Then, at ``output_stride`` 4 (the original layout), a 1x1
   conv to the classes (``classifier``) and bilinear to (H, W): logits 4 pixels apart, too coarse for 1-5 px
   buildings.
6. **Full-resolution head** (``output_stride`` 1, the default of ``conf/model/gscnn.yaml``):
   ``relu(input_branch(x) + up(adapt_1_4(decoder)))``, where ``input_branch`` is a shallow conv branch on the
   input ((3x3 conv, BN, ReLU) twice, ``in_channels`` -> ``fine_channels``) and ``adapt_1_4`` a 1x1 conv
   (``decoder_channels`` -> ``fine_channels``) upsampled bilinearly to (H, W); concatenated with the fused edge
   map, ``refine_1_1`` (3x3 conv, BN, ReLU) and ``classifier_1_1`` (1x1 conv to the classes): logits at (H, W)
   without interpolation. The shape stream is already at full resolution.

**ASPP rates** are dilations in pixels of the deepest feature map, which is ``crop / 32`` (MobileNetV2) or
``crop / 8`` (ResNet-50 at output stride 8) pixels wide at the training crop. A rate at or above that side
leaves the branch's off-centre taps on zero padding: they never learn, yet read real features at prediction
(:class:`~unosat.models.aspp.ASPP`). :meth:`GSCNN.forward` refuses such a combination at the first training
step; ``conf/model/gscnn.yaml`` uses 1/2/3, which train for crops of 128 px and more (the demo's 192 px crop:
6 x 6 features; the paper's 6/12/18 would need crops above 576 px there), ``conf/model/gscnn_resnet50.yaml``
4/8/12 (crops of 104 px and more; the paper's 12/24/36 need crops above 288 px).

:meth:`GSCNN.forward` returns ``(segmentation_logits (N, num_classes, H, W), edge_logits (N, 1, H, W))``;
the dual-task loss (:mod:`unosat.losses.gscnn`) trains both, prediction uses the first.

Every upsampling goes to the size of its target map, so any input size works (not only multiples of 32).

Parameters for 3 bands and 2 classes (regression pins, see ``tests/test_gscnn.py``): 5,982,738 with the
constructor's defaults (the paper's widths on MobileNetV2 at output stride 4: backbone 1,812,800, ASPP
2,772,480, decoder 1,291,264, shape stream 104,430); 3,483,998 with the narrower widths of
``conf/model/gscnn.yaml`` at output stride 1 (3,460,318 at output stride 4); 40,551,506 on ResNet-50
(``conf/model/gscnn_resnet50.yaml``, output stride 1; the ResNet itself 23,508,032).
:attr:`GSCNN.size_divisor`: the backbone's deepest stride (32 for MobileNetV2, 8 for the dilated ResNet-50).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unosat.errors import UnosatError
from unosat.models.aspp import ASPP, ConvBNReLU
from unosat.models.image_gradient import gradient_for_recipe
from unosat.models.mobilenetv2 import MobileNetV2Encoder
from unosat.models.reference_checkpoint import read_state_source, unwrap_state_dict
from unosat.models.resnet import resnet50

log = logging.getLogger(__name__)

SHAPE_GATES = 3  # gated convolutions in the shape stream
OUTPUT_STRIDES = (1, 4)  # of the segmentation logits
DATA_PARALLEL_PREFIX = "module."
# Prefixes under which a backbone sits in a whole-model state_dict (a unosat Lightning checkpoint: ``net.``).
BACKBONE_PREFIXES = ("net.encoder.", "net.backbone.", "encoder.", "backbone.")
CLASSIFIER_PREFIX = "fc."  # an ImageNet ResNet's head: not part of the backbone, dropped
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------- backbones


class BackboneTaps(NamedTuple):
    """Which backbone features (indices into its ``forward`` list) feed which part of GSCNN."""

    shape_input: int  # an early high-resolution feature: the start of the shape stream
    low_level: int  # the 1/4-stride feature joined by the decoder
    gates: tuple[int, int, int]  # three deeper stages gating the shape stream, shallow to deep
    deep: int  # the deepest feature, input of the ASPP


class BackboneSpec(NamedTuple):
    build: Callable[
        [int], nn.Module
    ]  # in_channels -> module with forward -> list, stage_channels, stage_strides
    taps: BackboneTaps


BACKBONES: dict[str, BackboneSpec] = {
    # features: stem 1/2, 16@1/2, 24@1/4, 32@1/8, 64@1/16, 96@1/16, 160@1/32, 320@1/32
    "mobilenetv2": BackboneSpec(
        MobileNetV2Encoder, BackboneTaps(shape_input=1, low_level=2, gates=(3, 5, 7), deep=7)
    ),
    # features: stem 64@1/2, 256@1/4, 512@1/8, 1024@1/8, 2048@1/8
    "resnet50": BackboneSpec(
        lambda c: resnet50(c, output_stride=8),
        BackboneTaps(shape_input=0, low_level=1, gates=(2, 3, 4), deep=4),
    ),
}


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Copy a local state_dict into ``backbone`` (in place); no download.

    The file (``torch.save``, read with ``weights_only=True``) holds the backbone's own state_dict, or a whole
    model's (keys under ``backbone.``/``encoder.``, or ``net.``... in a unosat checkpoint, whose backbone part is
    taken), possibly wrapped under ``state_dict``/``model`` and prefixed ``module.``. An ImageNet ResNet's
    ``fc.`` head is dropped.

    Raises:
        UnosatError: the file is missing or unreadable, or its tensors do not fit the backbone exactly.
    """
    if not Path(path).is_file():
        raise UnosatError(
            f"model.pretrained {path}: no such file (a local state_dict; nothing is downloaded)"
        )
    state = dict(unwrap_state_dict(read_state_source(path), str(path)))
    state = {k.removeprefix(DATA_PARALLEL_PREFIX): v for k, v in state.items()}
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    ours = backbone.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(ours[k].shape)}"
        for k in ours
        if k in state and state[k].shape != ours[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [
            f"model.pretrained {path} does not fit the {type(backbone).__name__} backbone "
            f"({backbone.in_channels} input bands):"
        ]
        for what, items in (
            ("shape mismatches", mismatched),
            ("missing keys", missing),
            ("unexpected keys", unexpected),
        ):
            if items:
                more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                lines.append(f"{what} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}")
        raise UnosatError("\n".join(lines))
    backbone.load_state_dict(state, strict=True)
    log.info("loaded %d backbone tensors from %s", len(state), path)


# ------------------------------------------------------------------------------------------- shape stream


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to (N, C, *size) (``align_corners=False``)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): ``relu(x + bn(conv3x3(relu(bn(conv3x3(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class GatedConv2d(nn.Module):
    """Gated convolution: ``alpha = sigmoid(BN(conv1x1(ReLU(conv1x1(BN(cat[f, s]))))))``,
    ``out = conv1x1(f * (alpha + 1))``.

    ``f`` (N, C, H, W): shape-stream features; ``s`` (N, 1, H, W): a (projected, upsampled) regular-stream
    feature. ``alpha`` (N, 1, H, W) in (0, 1) highlights where the regular stream sees boundaries; the output
    (N, C, H, W). Parameters: ``gate`` = BN(C+1), conv (C+1 -> C+1, bias), ReLU, conv (C+1 -> 1, no bias), BN(1),
    sigmoid; ``conv``: C -> C, no bias.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.BatchNorm2d(channels + 1),
            nn.Conv2d(channels + 1, channels + 1, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels + 1, 1, kernel_size=1, bias=False),  # the BatchNorm's shift is its bias
            nn.BatchNorm2d(1),
            nn.Sigmoid(),
        )
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)

    def forward(self, f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        alpha = self.gate(torch.cat([f, s], dim=1))
        return self.conv(f * (alpha + 1))


class ShapeStream(nn.Module):
    """The shape stream: edge logits (N, 1, H, W) at full resolution from backbone features.

    ``x = upsample(input_proj(start))`` (channels[0]); then for each of the 3 gates ``i``:
    ``x = gates[i](reduce[i](res[i](x)), upsample(gate_proj[i](feature_i)))`` (channels[i + 1]); finally
    ``head`` (1x1 conv with bias) to one channel.

    Args:
        input_channels: channels of the early feature the stream starts from.
        gate_channels: channels of the three deeper features that gate it.
        channels: 4 widths: after the input projection, then after each reduction (the paper: 64, 32, 16, 8).
    """

    def __init__(self, input_channels: int, gate_channels: Sequence[int], channels: Sequence[int]) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) != SHAPE_GATES + 1 or min(channels) < 1 or len(gate_channels) != SHAPE_GATES:
            raise UnosatError(
                f"model shape_channels must be {SHAPE_GATES + 1} positive widths, got {channels}"
            )
        self.input_proj = nn.Conv2d(input_channels, channels[0], kernel_size=1, bias=False)
        self.res = nn.ModuleList(ResidualBlock(c) for c in channels[:-1])
        self.reduce = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=1, bias=False) for a, b in zip(channels[:-1], channels[1:])
        )
        # no bias: the projection feeds the gate's BatchNorm, which removes any constant shift
        self.gate_proj = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in gate_channels)
        self.gates = nn.ModuleList(GatedConv2d(c) for c in channels[1:])
        self.head = nn.Conv2d(channels[-1], 1, kernel_size=1)

    def forward(
        self, start: torch.Tensor, gate_features: Sequence[torch.Tensor], size: Sequence[int]
    ) -> torch.Tensor:
        """start (N, input_channels, h, w), 3 gate features (N, gate_channels[i], h_i, w_i) -> (N, 1, *size)."""
        x = upsample(self.input_proj(start), size)
        for res, reduce, proj, gate, feature in zip(
            self.res, self.reduce, self.gate_proj, self.gates, gate_features
        ):
            x = gate(reduce(res(x)), upsample(proj(feature), size))
        return self.head(x)


# ------------------------------------------------------------------------------------------------- GSCNN


class GSCNN(nn.Module):
    """Gated Shape CNN, see the module docstring.

    Args:
        in_channels: input bands.
        num_classes: segmentation classes (2: background, building).
        backbone: a key of :data:`BACKBONES`: ``mobilenetv2`` (default, light) or ``resnet50`` (output stride 8).
        pretrained: path of a local state_dict for the backbone (:func:`load_backbone_weights`); None: train
            from scratch. Nothing is downloaded.
        input_recipe: ``{"bands", "units", "mean", "std"}`` of the input (filled in by ``train.py``), used to
            un-normalise the gradient band. None: the gradient is taken on the normalised first band.
        gradient_band: band of the recipe whose gradient is fused (``vv``).
        gradient_db_floor: linear power clamped below this before the gradient (1e-3: -30 dB).
        gradient_sigma_px: Gaussian smoothing of the speckle before the Sobel operator, pixels.
        gradient_scale_db: gradient in dB per pixel that maps to 1 in the fusion input.
        aspp_channels: width of the ASPP branches and output.
        aspp_rates: dilations of the ASPP's 3x3 branches, in pixels of the deepest feature map.
        low_level_channels: width of the decoder's reduction of the 1/4-stride features (48 in DeepLabV3+).
        decoder_channels: width of the decoder's 3x3 convs.
        shape_channels: 4 widths of the shape stream (:class:`ShapeStream`).
        output_stride: 4 (logits at 1/4, bilinear to the input size; the constructor's default, so that
            checkpoints saved before this argument existed rebuild as trained) or 1 (full-resolution head).
        fine_channels: width of the full-resolution head (output stride 1).

    Attributes: ``backbone``, ``shape_stream``, ``image_gradient``, ``fusion`` (1x1 conv 2 -> 1, no bias),
    ``aspp``, ``low_level``, ``decoder``, then ``classifier`` (output stride 4) or ``adapt_1_4``,
    ``input_branch``, ``refine_1_1``, ``classifier_1_1`` (output stride 1); ``size_divisor``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        backbone: str = "mobilenetv2",
        pretrained: str | None = None,
        input_recipe: Mapping | None = None,
        gradient_band: str = "vv",
        gradient_db_floor: float = 1e-3,
        gradient_sigma_px: float = 1.0,
        gradient_scale_db: float = 1.0,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (6, 12, 18),
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        shape_channels: Sequence[int] = (64, 32, 16, 8),
        output_stride: int = 4,
        fine_channels: int = 32,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UnosatError(f"model backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
        if in_channels is None or in_channels < 1 or num_classes < 1:
            raise UnosatError(
                f"model needs at least one input band and one class, got in_channels={in_channels}, "
                f"num_classes={num_classes}"
            )
        if input_recipe is not None and len(input_recipe.get("bands", ())) != in_channels:
            raise UnosatError(
                f"model input_recipe has bands {list(input_recipe.get('bands', ()))} but "
                f"in_channels={in_channels}"
            )
        if output_stride not in OUTPUT_STRIDES:
            raise UnosatError(f"model output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if int(fine_channels) < 1:
            raise UnosatError(f"model fine_channels must be positive, got {fine_channels}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.output_stride = int(output_stride)
        build, self.taps = BACKBONES[backbone]
        self.backbone = build(self.in_channels)
        if pretrained is not None:
            load_backbone_weights(self.backbone, Path(pretrained).expanduser())
        ch = self.backbone.stage_channels
        self.size_divisor = int(self.backbone.stage_strides[self.taps.deep])

        self.shape_stream = ShapeStream(
            ch[self.taps.shape_input], [ch[i] for i in self.taps.gates], shape_channels
        )
        self.image_gradient = gradient_for_recipe(
            None if input_recipe is None else dict(input_recipe),
            gradient_band,
            gradient_db_floor,
            gradient_sigma_px,
            gradient_scale_db,
        )
        self.fusion = nn.Conv2d(2, 1, kernel_size=1, bias=False)
        self.aspp = ASPP(ch[self.taps.deep], aspp_channels, aspp_rates, guidance_channels=1)
        self.low_level = ConvBNReLU(ch[self.taps.low_level], low_level_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            ConvBNReLU(aspp_channels + low_level_channels, decoder_channels, kernel_size=3),
            ConvBNReLU(decoder_channels, decoder_channels, kernel_size=3),
        )
        if self.output_stride == 4:
            self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        else:
            fine = int(fine_channels)
            self.adapt_1_4 = nn.Conv2d(decoder_channels, fine, kernel_size=1, bias=False)
            self.input_branch = nn.Sequential(
                ConvBNReLU(self.in_channels, fine, kernel_size=3), ConvBNReLU(fine, fine, kernel_size=3)
            )
            self.refine_1_1 = ConvBNReLU(fine + 1, fine, kernel_size=3)  # + the fused edge map
            self.classifier_1_1 = nn.Conv2d(fine, num_classes, kernel_size=1)

    def check_aspp_taps(self, x: torch.Tensor, deep: torch.Tensor) -> None:
        """Raise :class:`UnosatError` when an ASPP rate leaves taps on zero padding at this (training) input size."""
        dead = self.aspp.dead_rates(*deep.shape[-2:])
        if dead:
            h, w = deep.shape[-2:]
            raise UnosatError(
                f"model.aspp_rates {list(self.aspp.rates)}: a {x.shape[-2]} x {x.shape[-1]} px training crop gives "
                f"{h} x {w} px features at the ASPP (stride {self.size_divisor}); dilation(s) {dead} reach only zero "
                f"padding there, so those taps would never learn. Use rates below {min(h, w)} (e.g. about 1/6, 1/3, "
                f"1/2 of it) or a larger crop (data.augment's RandomCrop)"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, in_channels, H, W) -> (segmentation logits (N, num_classes, H, W), edge logits (N, 1, H, W))."""
        size = x.shape[-2:]
        features = self.backbone(x)
        taps = self.taps
        edge_logits = self.shape_stream(features[taps.shape_input], [features[i] for i in taps.gates], size)
        gradient = self.image_gradient(x).to(edge_logits.dtype)
        fused_edges = torch.sigmoid(self.fusion(torch.cat([torch.sigmoid(edge_logits), gradient], dim=1)))
        if self.training and torch.is_grad_enabled():
            self.check_aspp_taps(x, features[taps.deep])
        context = self.aspp(features[taps.deep], guidance=fused_edges)
        low = self.low_level(features[taps.low_level])
        top = self.decoder(torch.cat([upsample(context, low.shape[-2:]), low], dim=1))
        if self.output_stride == 4:
            return upsample(self.classifier(top), size), edge_logits
        fine = F.relu(self.input_branch(x) + upsample(self.adapt_1_4(top), size))
        logits = self.classifier_1_1(self.refine_1_1(torch.cat([fine, fused_edges], dim=1)))
        return logits, edge_logits
