"""The CPU rewrites of one-channel convolutions and reflection padding compute what torch computes."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from dicyc.nets import layers  # noqa: E402


@pytest.mark.parametrize("cin,cout,k,stride,padding,size", [
    (1, 40, 7, 1, 0, 22),   # the generator's input layer (after its reflection pad)
    (12, 1, 7, 1, 0, 22),   # the generator's output layer
    (1, 40, 4, 2, 1, 20),   # the PatchGAN's first layer
    (24, 1, 4, 1, 1, 9),    # the PatchGAN's last layer
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_single_channel_conv_matches_conv2d(cin, cout, k, stride, padding, size, channels_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, size, size + 2, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    conv = layers.Conv2d(cin, cout, k, stride=stride, padding=padding)
    assert conv._stacked(x)
    ref = F.conv2d(x, conv.weight, conv.bias, stride, padding)
    out = conv(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(ref.shape, generator=gen)
    ref_grads = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_single_channel_conv_under_bf16_autocast_stays_close_to_fp32():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 30, 30, generator=gen)
    conv = layers.Conv2d(16, 1, 7)
    ref = F.conv2d(x, conv.weight, conv.bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.float32  # the taps are summed in float32
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()


def test_other_convolutions_use_torch():
    conv = layers.Conv2d(4, 8, 3)
    assert not conv._stacked(torch.zeros(1, 4, 8, 8))
    assert not layers.Conv2d(1, 8, 7)._stacked(torch.zeros(1, 1, 8, 8))  # too few output channels
    assert torch.equal(conv(torch.ones(1, 4, 8, 8)), F.conv2d(torch.ones(1, 4, 8, 8), conv.weight, conv.bias))


def test_reflection_pad_keeps_bf16_under_autocast():
    pad = layers.ReflectionPad2d(2)
    x = torch.randn(1, 3, 6, 6).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pad(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.float(), F.pad(x.float(), (2, 2, 2, 2), mode="reflect"))
    assert pad(torch.ones(1, 1, 4, 4)).dtype == torch.float32
