"""CycleGAN's ResNet generator with named stages and a warp hook.

DiCyc inserts deformable (offset) convolutions *before* particular stages and warps the
latent code; rather than subclassing per method, :meth:`ResnetGenerator.forward` takes an
optional ``warp(stage_name, features)`` callable applied at those points, so every method
shares one set of weights layout (and one model-file format).
"""

from torch import nn

from dicyc.nets.layers import Conv2d, ReflectionPad2d

UPSAMPLE_MODES = ("transpose", "resize")


def _norm(channels):
    # affine=False and no running statistics: the network holds no buffers, and train/eval
    # behave identically (per-image statistics), which is what CycleGAN uses.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """Two reflection-padded 3x3 convolutions with a skip connection (no dropout)."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _norm(channels),
            nn.ReLU(inplace=True),
            ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3),
            _norm(channels),
        )

    def forward(self, x):
        return x + self.body(x)


def _upsample(in_ch, out_ch, mode):
    if mode == "transpose":
        conv = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=3, stride=2, padding=1, output_padding=1)
        return nn.Sequential(conv, _norm(out_ch), nn.ReLU(inplace=True))
    # nearest x2 then a plain conv: every output pixel sees the same number of taps, which
    # avoids the checkerboard pattern transposed convolutions can leave.
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        ReflectionPad2d(1),
        nn.Conv2d(in_ch, out_ch, kernel_size=3),
        _norm(out_ch),
        nn.ReLU(inplace=True),
    )


def encoder_stages(input_nc, ngf):
    """c7s1-ngf and the two stride-2 down-samplings (ngf → 2ngf → 4ngf), as separate stages.

    Shared by the ResNet generator and UNIT's encoders so both have the papers' front end.
    """
    stem = nn.Sequential(ReflectionPad2d(3), Conv2d(input_nc, ngf, kernel_size=7), _norm(ngf), nn.ReLU(inplace=True))
    down1 = nn.Sequential(nn.Conv2d(ngf, 2 * ngf, kernel_size=3, stride=2, padding=1), _norm(2 * ngf), nn.ReLU(inplace=True))
    down2 = nn.Sequential(
        nn.Conv2d(2 * ngf, 4 * ngf, kernel_size=3, stride=2, padding=1), _norm(4 * ngf), nn.ReLU(inplace=True)
    )
    return stem, down1, down2


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-output_nc, tanh.

    ``warp_points`` lists ``(stage_name, channels, stride)`` for every place ``warp`` is
    called, in call order, so a method can build its offset layers without knowing the
    internals (``stride`` is the downsampling factor relative to the input image).
    """

    def __init__(self, input_nc=1, output_nc=1, ngf=64, n_blocks=9, upsample="transpose"):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if min(input_nc, output_nc, ngf) < 1 or n_blocks < 0:
            raise ValueError("input_nc, output_nc and ngf must be >= 1 and n_blocks >= 0")
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.n_blocks, self.upsample = n_blocks, upsample

        self.stem, self.down1, self.down2 = encoder_stages(input_nc, ngf)
        self.blocks = nn.ModuleList(ResnetBlock(4 * ngf) for _ in range(n_blocks))
        self.up1 = _upsample(4 * ngf, 2 * ngf, upsample)
        self.up2 = _upsample(2 * ngf, ngf, upsample)
        self.head = nn.Sequential(ReflectionPad2d(3), Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh())

        self.warp_points = [("stem", input_nc, 1), ("down1", ngf, 1), ("down2", 2 * ngf, 2)]
        self.warp_points += [(f"block{i}", 4 * ngf, 4) for i in range(n_blocks)]
        self.warp_points.append(("latent", 4 * ngf, 4))

    def forward(self, x, warp=None):
        """Translate ``x`` (N, input_nc, H, W), H and W multiples of 4, to (N, output_nc, H, W).

        ``warp(stage, features)``, when given, is applied in front of every stage of
        :attr:`warp_points` (the latent code last), the hook DiCyc's deformed pass uses.
        """
        if warp is None:
            return self.decode(self.encode(x))
        return self.decode(warp("latent", self.encode(x, warp)))

    def encode(self, x, warp=None):
        """Latent features after the residual stack: (N, 4*ngf, H/4, W/4).

        ``warp`` is applied in front of the input block, the down-samplings and each residual
        block, but not to the result: DiCyc's TPS transformer warps the latent code itself,
        reading it next to the latent code of a target-domain image (Wang et al., Information
        Fusion 2021).
        """
        if x.dim() != 4 or x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"expected (N, C, H, W) with H and W multiples of 4, got {tuple(x.shape)}")
        if warp is None:
            x = self.down2(self.down1(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            return x
        x = self.stem(warp("stem", x))
        x = self.down1(warp("down1", x))
        x = self.down2(warp("down2", x))
        for i, block in enumerate(self.blocks):
            x = block(warp(f"block{i}", x))
        return x

    def decode(self, latent):
        """Output image from latent features: ``forward(x) == decode(encode(x))``.

        Split so DiCyc's undeformed pass can keep each image's latent code, which its TPS
        transformers read as the target-domain code, instead of encoding the image again.
        """
        return self.head(self.up2(self.up1(latent)))

    def architecture(self):
        """The model card's ``architecture`` entry that rebuilds this network."""
        return {
            "generator": "resnet",
            "ngf": self.ngf,
            "n_blocks": self.n_blocks,
            "upsample": self.upsample,
            "input_nc": self.input_nc,
            "output_nc": self.output_nc,
        }


__all__ = ["ResnetGenerator", "ResnetBlock", "UPSAMPLE_MODES"]
