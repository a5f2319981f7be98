"""The 70x70 PatchGAN discriminator of pix2pix/CycleGAN.

It classifies overlapping patches rather than whole images, so it judges local texture
(what a translation gets wrong first) with few parameters, and works at any input size.
"""

from torch import nn

from dicyc.nets.layers import Conv2d


class PatchDiscriminator(nn.Module):
    """C(ndf)-C(2ndf)-...-C(min(2^n,8)ndf, stride 1)-conv to 1 channel; 4x4 kernels, padding 1.

    With ``n_layers=3`` each output value sees a 70x70 input window, and a 256x256 input
    gives a 30x30 map of scores (LSGAN targets are applied per score).
    """

    def __init__(self, input_nc=1, ndf=64, n_layers=3):
        super().__init__()
        if input_nc < 1 or ndf < 1 or n_layers < 0:
            raise ValueError("input_nc and ndf must be >= 1 and n_layers >= 0")
        self.input_nc, self.ndf, self.n_layers = input_nc, ndf, n_layers
        # No normalisation on the first layer: normalising raw image intensities would
        # throw away the absolute level the discriminator should judge.
        layers = [Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(channels, out, kernel_size=4, stride=stride, padding=1),
                nn.InstanceNorm2d(out, affine=False, track_running_stats=False),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        layers.append(Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)

    def receptive_field(self):
        """Input window (pixels) seen by one output value, computed from the conv layers."""
        field, jump = 1, 1
        for layer in self.model:
            if isinstance(layer, nn.Conv2d):
                field += (layer.kernel_size[0] - 1) * jump
                jump *= layer.stride[0]
        return field
