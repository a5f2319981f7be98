"""Generator and PatchGAN: shapes, the warp hook, parameter counts, receptive field, init."""

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from dicyc.nets import (  # noqa: E402
    PatchDiscriminator,
    ResnetGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
    init_weights,
)


def tiny(upsample="transpose", **kw):
    torch.manual_seed(0)
    arch = {"ngf": 4, "n_blocks": 2, "upsample": upsample, **kw}
    return build_generator(arch).eval()


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("shape", [(32, 48), (64, 64), (36, 20)])
def test_generator_is_fully_convolutional_and_bounded(upsample, shape):
    net = tiny(upsample)
    x = torch.randn(2, 1, *shape) * 3
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_generator_channels():
    net = tiny(input_nc=2, output_nc=3)
    with torch.no_grad():
        assert net(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_generator_rejects_sizes_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiples of 4"):
        tiny()(torch.randn(1, 1, 30, 32))


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_warp_hook_stages_and_identity(upsample):
    net = tiny(upsample)
    x = torch.randn(1, 1, 32, 32)
    seen = []

    def identity(name, feats):
        seen.append((name, feats.shape[1], 32 // feats.shape[-1]))
        return feats

    with torch.no_grad():
        plain = net(x)
        hooked = net(x, warp=identity)
    assert [s[0] for s in seen] == ["stem", "down1", "down2", "block0", "block1", "latent"]
    # warp_points announces the same names, channel counts and strides the hook sees
    assert seen == net.warp_points
    assert torch.equal(plain, hooked)


def test_warp_that_perturbs_changes_output():
    net = tiny()
    x = torch.randn(1, 1, 32, 32)

    def shift_latent(name, feats):
        return torch.roll(feats, 1, dims=-1) if name == "latent" else feats

    with torch.no_grad():
        assert not torch.allclose(net(x), net(x, warp=shift_latent))


def test_paper_size_parameter_count():
    # CycleGAN's ResNet generator, ngf=64, 9 blocks, biases on every conv (InstanceNorm affine=False):
    #   stem  7x7 1->64:      49*1*64 + 64     =      3,200
    #   down1 3x3 64->128:    9*64*128 + 128   =     73,856
    #   down2 3x3 128->256:   9*128*256 + 256  =    295,168
    #   9 blocks x 2 x (3x3 256->256): 18*(9*256*256 + 256) = 10,621,440
    #   up1   3x3 256->128:   9*256*128 + 128  =    295,040
    #   up2   3x3 128->64:    9*128*64 + 64    =     73,792
    #   head  7x7 64->1:      49*64*1 + 1      =      3,137
    #   total                                  = 11,365,633
    # With 3 channels the stem is 9,472 and the head 9,411, giving the reference 11,378,179.
    with torch.device("meta"):
        one = ResnetGenerator(1, 1, 64, 9)
        three = ResnetGenerator(3, 3, 64, 9)
        resize = ResnetGenerator(1, 1, 64, 9, upsample="resize")
    assert count_parameters(one) == 11_365_633
    assert count_parameters(three) == 11_378_179
    assert count_parameters(resize) == 11_365_633  # same 3x3 kernels, just not transposed
    assert not list(one.buffers())  # no running statistics to carry in a model file


def test_patchgan_output_shape_and_receptive_field():
    with torch.device("meta"):
        paper = PatchDiscriminator(1, 64, 3)
    assert paper.receptive_field() == 70
    # 16*1*64+64 + 16*64*128+128 + 16*128*256+256 + 16*256*512+512 + 16*512*1+1 = 2,762,689
    # (with 3 input channels 2,764,737: the reference's "2.765 M")
    assert count_parameters(paper) == 2_762_689

    torch.manual_seed(0)
    net = build_discriminator(ndf=4, n_layers=3)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 256, 256)).shape == (1, 1, 30, 30)

    # Empirically: InstanceNorm couples all positions through its statistics, so remove it and
    # check which input pixels one interior output value depends on.
    for i, layer in enumerate(net.model):
        if isinstance(layer, nn.InstanceNorm2d):
            net.model[i] = nn.Identity()
    x = torch.randn(1, 1, 128, 128, dtype=torch.float64, requires_grad=True)
    out = net.double()(x)
    out[0, 0, 7, 7].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
    cols = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70
    assert rows.min() == 7 * 8 - 23  # window start: stride 8, total padding reach 23


def test_init_weights_std():
    torch.manual_seed(0)
    with torch.no_grad():
        net = init_weights(ResnetGenerator(1, 1, 16, 2))
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.02) < 0.001
    assert abs(weights.mean().item()) < 0.001
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)


def test_build_generator_defaults_and_errors():
    with torch.device("meta"):
        net = build_generator({}, init=False)
    assert net.architecture() == {"generator": "resnet", "ngf": 64, "n_blocks": 9, "upsample": "transpose", "input_nc": 1, "output_nc": 1}
    with pytest.raises(ValueError):
        build_generator({"generator": "unet"})
    with pytest.raises(ValueError):
        build_generator({"upsample": "bilinear"})
    with pytest.raises(ValueError):
        build_generator({"ngf": 0})
