"""UNIT (Liu, Breuel & Kautz, NIPS 2017): coupled VAE-GANs sharing one latent space.

Each domain has an encoder E and a decoder (generator) G. The encoders' last, high-level
layers and the decoders' first layers are *the same layers* for both domains (weight
sharing), which together with the cycle terms makes an image and its translation map to one
latent code z. The encoder outputs the mean μ of q(z | x) = N(μ, I): during training the
decoder reads z = μ + ε with ε ~ N(0, I) (the recipe draws ε); synthesis uses μ alone.

Layout, for ``ngf`` and ``n_blocks`` meaning what they mean for the ResNet generator (a
translation passes through ``n_blocks`` residual blocks of 4·ngf channels at 1/4 resolution):

    E_X (private): c7s1-ngf, d2ngf, d4ngf, enc_private × R4ngf
    shared:        shared_blocks × R4ngf   (encoder end, → μ)
                   shared_blocks × R4ngf   (decoder start, ← z)
    G_Y (private): dec_private × R4ngf, u2ngf, ungf, c7s1-out, tanh

with ``ceil(n_blocks / 2)`` blocks on the encoder side and ``floor(n_blocks / 2)`` on the
decoder side, at least ``shared_blocks`` each (UNIT's paper: 4 + 4, the last encoder block
and the first decoder block shared), so a UNIT translator costs what a ResNet generator of
the same ``n_blocks`` costs (for ``n_blocks`` >= 2).

The synthesis network for one direction is a :class:`UnitTranslator` — the source domain's
encoder, the shared layers and the target domain's decoder: ``forward(x) = G_Y(μ(x))``. A
model file holds ``G_AB`` and ``G_BA`` as two such translators (the shared weights stored in
both). For training, :func:`unit_pair` builds the two translators around one shared module,
so every shared layer is one ``Parameter`` object reachable from both.
"""

from torch import nn

from dicyc.nets.generator import UPSAMPLE_MODES, ResnetBlock, _upsample, encoder_stages
from dicyc.nets.layers import Conv2d, ReflectionPad2d

DIRECTIONS = ("a2b", "b2a")
UNIT_DEFAULTS = {"shared_blocks": 1}


def split_blocks(n_blocks, shared_blocks):
    """(encoder blocks, decoder blocks), shared ones included, of a translation with ``n_blocks``.

    ``ceil(n_blocks / 2)`` on the encoder side and ``floor(n_blocks / 2)`` on the decoder side,
    but never fewer than ``shared_blocks`` on either (so ``n_blocks`` 1 still shares a block
    at each side). Raises ``ValueError`` if ``shared_blocks`` < 1 or ``n_blocks`` < 0.
    """
    if shared_blocks < 1:
        raise ValueError(f"UNIT needs 'shared_blocks' >= 1 (weight sharing is what makes it UNIT), got {shared_blocks}")
    if n_blocks < 0:
        raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
    return max(n_blocks - n_blocks // 2, shared_blocks), max(n_blocks // 2, shared_blocks)


def _check_image(x):
    if x.dim() != 4 or x.shape[-2] % 4 or x.shape[-1] % 4:
        raise ValueError(f"expected (N, C, H, W) with H and W multiples of 4, got {tuple(x.shape)}")


class UnitEncoder(nn.Module):
    """A domain's private encoder front: c7s1-ngf, two stride-2 downsamplings, residual blocks."""

    def __init__(self, input_nc=1, ngf=64, n_blocks=3):
        super().__init__()
        self.stem, self.down1, self.down2 = encoder_stages(input_nc, ngf)
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(n_blocks)])

    def forward(self, x):
        return self.blocks(self.down2(self.down1(self.stem(x))))


class UnitDecoder(nn.Module):
    """A domain's private decoder back: residual blocks, two upsamplings, c7s1-output_nc, tanh."""

    def __init__(self, output_nc=1, ngf=64, n_blocks=3, upsample="transpose"):
        super().__init__()
        self.blocks = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(n_blocks)])
        self.up1 = _upsample(4 * ngf, 2 * ngf, upsample)
        self.up2 = _upsample(2 * ngf, ngf, upsample)
        self.head = nn.Sequential(ReflectionPad2d(3), Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh())

    def forward(self, h):
        return self.head(self.up2(self.up1(self.blocks(h))))


class UnitShared(nn.Module):
    """The high-level layers both domains share: the encoders' last and the decoders' first blocks."""

    def __init__(self, ngf=64, shared_blocks=1):
        super().__init__()
        self.encoder = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(shared_blocks)])
        self.decoder = nn.Sequential(*[ResnetBlock(4 * ngf) for _ in range(shared_blocks)])


def _copy_borrowed_shared(module, state_dict, prefix, local_metadata):
    """State-dict post-hook of a translator that borrows its shared layers from another.

    Both translators of a pair list the shared weights; safetensors refuses to write two
    names for one storage (a model file holds G_AB and G_BA, a checkpoint every network), so
    the borrower reports copies. Loading writes into the one shared ``Parameter`` either way.
    ``keep_vars=True`` callers still get the live parameters.
    """
    head = prefix + "shared."
    for key, value in state_dict.items():
        if key.startswith(head) and not isinstance(value, nn.Parameter):
            state_dict[key] = value.clone()


class UnitTranslator(nn.Module):
    """One direction of UNIT: source encoder → shared layers → target decoder.

    ``forward(x)`` is the deterministic synthesis pass ``decode(encode(x))`` on μ (no noise),
    (N, input_nc, H, W) → (N, output_nc, H, W) in [-1, 1] for any H, W that are multiples of 4.
    ``encode(x)`` gives μ, ``decode(z)`` an image; the recipe adds the sampling noise between.
    """

    def __init__(self, encoder, shared, decoder, direction="a2b", arch=None, borrowed=False):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.encoder, self.shared, self.decoder = encoder, shared, decoder
        self.direction = direction
        self._arch = dict(arch or {})
        if borrowed:
            self.register_state_dict_post_hook(_copy_borrowed_shared)

    @classmethod
    def build(cls, input_nc=1, output_nc=1, ngf=64, n_blocks=9, shared_blocks=1, upsample="transpose",
              direction="a2b", shared=None):
        """A translator with fresh private parts; ``shared`` (a :class:`UnitShared`) is borrowed if given."""
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}")
        if min(input_nc, output_nc, ngf) < 1:
            raise ValueError("input_nc, output_nc and ngf must be >= 1")
        enc, dec = split_blocks(n_blocks, shared_blocks)
        arch = {"generator": "unit", "ngf": ngf, "n_blocks": n_blocks, "shared_blocks": shared_blocks,
                "upsample": upsample, "input_nc": input_nc, "output_nc": output_nc}
        borrowed = shared is not None
        if shared is None:
            shared = UnitShared(ngf, shared_blocks)
        return cls(
            UnitEncoder(input_nc, ngf, enc - shared_blocks),
            shared,
            UnitDecoder(output_nc, ngf, dec - shared_blocks, upsample),
            direction=direction, arch=arch, borrowed=borrowed,
        )

    def encode(self, x):
        """μ of q(z | x): (N, 4·ngf, H/4, W/4)."""
        _check_image(x)
        return self.shared.encoder(self.encoder(x))

    def decode(self, z):
        """The target-domain image of latent code ``z`` (μ, or μ + noise in training)."""
        return self.decoder(self.shared.decoder(z))

    def forward(self, x):
        return self.decode(self.encode(x))

    def architecture(self):
        """The model card's ``architecture`` entry that rebuilds this network (either direction)."""
        return dict(self._arch)

    def extra_repr(self):
        return f"direction={self.direction!r}"


def unit_pair(input_nc=1, output_nc=1, ngf=64, n_blocks=9, shared_blocks=1, upsample="transpose"):
    """``{"G_AB": E_A→shared→G_B, "G_BA": E_B→shared→G_A}`` around one :class:`UnitShared`.

    Both translators hold the same shared submodule (the same ``Parameter`` objects); G_BA
    borrows it, so its ``state_dict`` reports copies of those tensors (see
    :func:`_copy_borrowed_shared`). An optimiser over both must take each parameter once.
    Domains A and B both have ``input_nc`` channels, so ``output_nc`` must equal it.
    """
    if input_nc != output_nc:
        raise ValueError("a UNIT pair translates between domains with the same number of channels")
    kw = dict(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks, shared_blocks=shared_blocks,
              upsample=upsample)
    g_ab = UnitTranslator.build(direction="a2b", **kw)
    g_ba = UnitTranslator.build(direction="b2a", shared=g_ab.shared, **kw)
    return {"G_AB": g_ab, "G_BA": g_ba}


__all__ = ["UnitEncoder", "UnitDecoder", "UnitShared", "UnitTranslator", "unit_pair", "split_blocks", "UNIT_DEFAULTS",
           "DIRECTIONS"]
