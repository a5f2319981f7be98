"""Networks: the ResNet generator, UNIT's translators, the PatchGAN discriminator, and their construction.

Model files and configurations describe networks as plain dicts (the card's
``architecture``); :func:`build_generator` is the one place that turns such a dict into a
module, so training and synthesis cannot disagree about the layout.
"""

from torch import nn

from dicyc.nets.discriminator import PatchDiscriminator
from dicyc.nets.generator import UPSAMPLE_MODES, ResnetBlock, ResnetGenerator
from dicyc.nets.unit import UNIT_DEFAULTS, UnitTranslator, unit_pair

__all__ = [
    "ResnetGenerator",
    "ResnetBlock",
    "PatchDiscriminator",
    "UnitTranslator",
    "GENERATOR_KINDS",
    "UPSAMPLE_MODES",
    "GENERATOR_DEFAULTS",
    "init_weights",
    "build_generator",
    "build_discriminator",
    "build_unit_pair",
    "count_parameters",
]

GENERATOR_DEFAULTS = {"generator": "resnet", "ngf": 64, "n_blocks": 9, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
#: what an architecture's ``"generator"`` may name: CycleGAN's ResNet generator, or one UNIT translator
GENERATOR_KINDS = ("resnet", "unit")


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


def _generator_args(arch):
    """The architecture dict with defaults filled in and every value checked (``ValueError``)."""
    arch = {**GENERATOR_DEFAULTS, **(arch or {})}
    if arch["generator"] not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator {arch['generator']!r}; this DiCyc knows {', '.join(map(repr, GENERATOR_KINDS))}")
    if arch["upsample"] not in UPSAMPLE_MODES:
        raise ValueError(f"architecture 'upsample' must be one of {UPSAMPLE_MODES}, got {arch['upsample']!r}")
    args = dict(
        input_nc=_positive_int(arch, "input_nc", 1),
        output_nc=_positive_int(arch, "output_nc", 1),
        ngf=_positive_int(arch, "ngf", 1),
        n_blocks=_positive_int(arch, "n_blocks", 0),
        upsample=arch["upsample"],
    )
    if arch["generator"] == "unit":
        arch = {**UNIT_DEFAULTS, **arch}
        args["shared_blocks"] = _positive_int(arch, "shared_blocks", 1)
    return arch, args


def build_generator(arch=None, init=True):
    """Build the generator a model card's ``architecture`` dict describes.

    ``"generator": "resnet"`` (the default) is CycleGAN's ResNet generator; ``"unit"`` is one
    UNIT translator (source encoder, shared layers, target decoder; optional ``"direction"``
    ``"a2b"``/``"b2a"``, which names it but changes no layer). Missing keys take
    :data:`GENERATOR_DEFAULTS` (the paper's network); unknown generator kinds or bad values
    raise ``ValueError``. ``init=False`` skips the weight draw, for callers that load
    weights straight after.
    """
    arch, args = _generator_args(arch)
    if arch["generator"] == "unit":
        net = UnitTranslator.build(direction=arch.get("direction", "a2b"), **args)
    else:
        net = ResnetGenerator(**args)
    return init_weights(net) if init else net


def build_unit_pair(arch=None, init=True):
    """UNIT's two translators for training, ``{"G_AB", "G_BA"}``, sharing one set of shared layers.

    Each is laid out exactly as :func:`build_generator` builds a ``"unit"`` architecture, so
    their state dicts are what a model file stores; the shared layers are the same
    ``Parameter`` objects in both (deduplicate when handing both to one optimiser).
    """
    arch, args = _generator_args({"generator": "unit", **(arch or {})})
    if arch["generator"] != "unit":
        raise ValueError(f"build_unit_pair builds UNIT translators, not {arch['generator']!r} generators")
    pair = unit_pair(**args)
    if init:
        for net in pair.values():
            init_weights(net)
    return pair


def build_discriminator(ndf=64, n_layers=3, input_nc=1, init=True):
    """Build a PatchGAN discriminator (70x70 for ``n_layers=3``), N(0, 0.02)-initialised."""
    net = PatchDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers)
    return init_weights(net) if init else net


def count_parameters(module, trainable_only=False):
    """Number of scalar parameters in ``module`` (optionally only those requiring grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
