"""Networks: the ResNet generator, the PatchGAN discriminator, and their construction.

Model files and configurations describe networks as plain dicts (the card's
``architecture``); :func:`build_generator` is the one place that turns such a dict into a
module, so training and synthesis cannot disagree about the layout.
"""

from torch import nn

from dicyc.nets.discriminator import PatchDiscriminator
from dicyc.nets.generator import UPSAMPLE_MODES, ResnetBlock, ResnetGenerator

__all__ = [
    "ResnetGenerator",
    "ResnetBlock",
    "PatchDiscriminator",
    "UPSAMPLE_MODES",
    "GENERATOR_DEFAULTS",
    "init_weights",
    "build_generator",
    "build_discriminator",
    "count_parameters",
]

GENERATOR_DEFAULTS = {"generator": "resnet", "ngf": 64, "n_blocks": 9, "upsample": "transpose", "input_nc": 1, "output_nc": 1}


def init_weights(module, gain=0.02):
    """Draw conv weights from N(0, gain) and zero the biases, as CycleGAN does.

    PyTorch's default (Kaiming-uniform) init trains noticeably less stably in GANs; the
    reference results were obtained with this one. Returns ``module`` for chaining.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _positive_int(arch, key, minimum):
    value = arch[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"architecture {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def build_generator(arch=None, init=True):
    """Build the generator a model card's ``architecture`` dict describes.

    Missing keys take :data:`GENERATOR_DEFAULTS` (the paper's network); unknown generator
    kinds or bad values raise ``ValueError``. ``init=False`` skips the weight draw, for
    callers that load weights straight after.
    """
    arch = {**GENERATOR_DEFAULTS, **(arch or {})}
    if arch["generator"] != "resnet":
        raise ValueError(f"unknown generator {arch['generator']!r}; this DiCyc knows 'resnet'")
    if arch["upsample"] not in UPSAMPLE_MODES:
        raise ValueError(f"architecture 'upsample' must be one of {UPSAMPLE_MODES}, got {arch['upsample']!r}")
    net = ResnetGenerator(
        input_nc=_positive_int(arch, "input_nc", 1),
        output_nc=_positive_int(arch, "output_nc", 1),
        ngf=_positive_int(arch, "ngf", 1),
        n_blocks=_positive_int(arch, "n_blocks", 0),
        upsample=arch["upsample"],
    )
    return init_weights(net) if init else net


def build_discriminator(ndf=64, n_layers=3, input_nc=1, init=True):
    """Build a PatchGAN discriminator (70x70 for ``n_layers=3``), N(0, 0.02)-initialised."""
    net = PatchDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers)
    return init_weights(net) if init else net


def count_parameters(module, trainable_only=False):
    """Number of scalar parameters in ``module`` (optionally only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
