"""VDVAE hyperparameters (Child 2021): the published imagenet64 set and nsdbench's reduced CPU set."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VDVAEConfig:
    """Architecture and input preprocessing of one VDVAE; layer strings use the published syntax.

    Layer strings are comma-separated items: `RxK` = K blocks at resolution R, `RmS` = one decoder block at R
    that mixes in the upsampled state of resolution S, `RdF` = one encoder block at R followed by F-fold
    average pooling. Images are HWC; the encoder input is `(pixel + shift) * scale` on 0-255 values.
    """

    name: str
    image_size: int
    width: int
    zdim: int
    enc_blocks: str
    dec_blocks: str
    n_latent_groups: int  # decoder groups whose latents a method encodes and predicts
    bottleneck_multiple: float = 0.25
    num_mixtures: int = 10
    no_bias_above: int = 64
    image_channels: int = 3
    shift: float = -115.92961967  # imagenet64 pixel mean, negated
    scale: float = 1.0 / 69.37404  # 1 / imagenet64 pixel std

    @property
    def bottleneck(self) -> int:
        return int(self.width * self.bottleneck_multiple)

    def encoder_layers(self) -> list[tuple[int, int | None]]:
        """(resolution, down-sampling factor or None) for each encoder block."""
        return parse_layers(self.enc_blocks, "d")

    def decoder_layers(self) -> list[tuple[int, int | None]]:
        """(resolution, mixed-in lower resolution or None) for each decoder block."""
        return parse_layers(self.dec_blocks, "m")

    def resolutions(self) -> list[int]:
        return sorted({res for res, _ in self.decoder_layers()})

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(zdim, res, res) of every decoder group, in decoding order."""
        return [(self.zdim, res, res) for res, _ in self.decoder_layers()]

    def latent_dim(self, groups: int | None = None) -> int:
        """Length of the flattened latents of the first `groups` decoder groups (default n_latent_groups)."""
        n = self.n_latent_groups if groups is None else groups
        return sum(c * h * w for c, h, w in self.latent_shapes()[:n])


def parse_layers(spec: str, marker: str) -> list[tuple[int, int | None]]:
    """Expand a layer string into (resolution, argument) pairs; `marker` is "d" (encoder) or "m" (decoder)."""
    layers: list[tuple[int, int | None]] = []
    for item in spec.split(","):
        if "x" in item:
            res, count = (int(v) for v in item.split("x"))
            layers += [(res, None)] * count
        elif marker in item:
            res, arg = (int(v) for v in item.split(marker))
            layers.append((res, arg))
        else:
            layers.append((int(item), None))
    return layers


IMAGENET64 = VDVAEConfig(
    name="imagenet64",
    image_size=64,
    width=512,
    zdim=16,
    enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
    dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
    n_latent_groups=31,  # brain-diffuser: groups at 1, 4, 8, 16 px and the first 32-px group = 91,168 values
)

# Same resolution ladder as imagenet64 (64 px in, every block kind present), a few blocks, width 16.
TINY = VDVAEConfig(
    name="tiny",
    image_size=64,
    width=16,
    zdim=4,
    enc_blocks="64x1,64d2,32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x2",
    dec_blocks="1x2,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1,64m32,64x1",
    n_latent_groups=9,  # as imagenet64: every group below 32 px and the first 32-px group
    num_mixtures=5,
)

CONFIGS: dict[str, VDVAEConfig] = {"imagenet64": IMAGENET64, "tiny": TINY}
