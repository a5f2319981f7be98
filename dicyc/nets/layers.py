"""Drop-in layers that compute exactly what their torch counterparts compute, faster on a CPU.

Both keep the parameter names and shapes of the torch module they subclass, so state dicts,
checkpoints and model files are unchanged.

* :class:`Conv2d` — a convolution with one input or one output channel (the generators' 7x7
  c7s1 input and output layers, the PatchGAN's first and last layers). oneDNN runs these at a
  few GFLOP/s on a CPU (its kernels vectorise over channels; with one channel there is nothing
  to vectorise), and its bf16 kernel for one output channel is slower still: on a 2-core
  Xeon the 64-channel 7x7 output layer at 128x128 took 4x (fp32) to 5x (bf16) longer
  forward+backward than this rewrite. Here the k x k taps become channels, so the work is
  one 1x1 convolution (a matrix product at full speed) plus k² shifted copies or sums:

  - one input channel: stack the k² shifted (strided) views of the padded input, then a 1x1
    convolution of k² → C_out channels;
  - one output channel: a 1x1 convolution of C_in → k² channels, then the sum of the k² maps,
    each shifted by its tap, accumulated in float32 (also under autocast: one rounding per
    tap instead of one per output, where oneDNN's bf16 kernel rounds once).

  The same products and sums as the direct convolution, in another order: outputs and
  gradients agree with ``torch.nn.functional.conv2d`` to float32 rounding (tested). Used on
  the CPU only, for one input channel only where the output has at least
  :data:`MIN_STACKED_CHANNELS` channels (below that oneDNN's direct kernel is as fast);
  CUDA keeps cuDNN.
* :class:`ReflectionPad2d` — CPU autocast runs reflection padding in float32, so every
  padded bf16 activation was cast to float32 and back to bf16 by the next convolution. A pad
  is a copy, exact in any dtype: this one pads in the input's dtype.
"""

import torch
import torch.nn.functional as F
from torch import nn

#: one-input-channel convolutions use the stacked path from this many output channels on
MIN_STACKED_CHANNELS = 32


def _autocast_dtype(device_type):
    """The autocast dtype in force for ``device_type``, or None where autocast is off."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: per-device queries
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _tap(t, ky, kx, stride, ho, wo, channel=None):
    """The (B, Ho, Wo) view of ``t`` read by tap (ky, kx) of a strided k x k window."""
    c = 0 if channel is None else channel
    return t[:, c, ky : ky + stride * (ho - 1) + 1 : stride, kx : kx + stride * (wo - 1) + 1 : stride]


def _out_size(n, k, stride):
    return (n - k) // stride + 1


class _StackTaps(torch.autograd.Function):
    """(B, 1, Hp, Wp) → (B, kh*kw, Ho, Wo): channel ky*kw+kx holds the input shifted by tap (ky, kx)."""

    @staticmethod
    def forward(ctx, x, kh, kw, stride):
        n, _, hp, wp = x.shape
        ho, wo = _out_size(hp, kh, stride), _out_size(wp, kw, stride)
        ctx.meta = (tuple(x.shape), kh, kw, stride, ho, wo)
        out = x.new_empty((n, kh * kw, ho, wo))
        for ky in range(kh):
            for kx in range(kw):
                out[:, ky * kw + kx] = _tap(x, ky, kx, stride, ho, wo)
        return out

    @staticmethod
    def backward(ctx, grad):
        shape, kh, kw, stride, ho, wo = ctx.meta
        gx = grad.new_zeros(shape)
        for ky in range(kh):
            for kx in range(kw):
                _tap(gx, ky, kx, stride, ho, wo).add_(grad[:, ky * kw + kx])
        return gx, None, None, None


class _SumTaps(torch.autograd.Function):
    """(B, kh*kw, Hp, Wp) → (B, 1, Ho, Wo) float32: the sum over taps of channel ky*kw+kx shifted by (ky, kx)."""

    @staticmethod
    def forward(ctx, y, kh, kw, stride):
        n, _, hp, wp = y.shape
        ho, wo = _out_size(hp, kh, stride), _out_size(wp, kw, stride)
        ctx.meta = (tuple(y.shape), y.dtype, kh, kw, stride, ho, wo)
        out = torch.zeros((n, ho, wo), dtype=torch.float32, device=y.device)
        for ky in range(kh):
            for kx in range(kw):
                out += _tap(y, ky, kx, stride, ho, wo, ky * kw + kx)
        return out.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad):
        shape, dtype, kh, kw, stride, ho, wo = ctx.meta
        g = grad[:, 0].to(dtype)
        gy = torch.zeros(shape, dtype=dtype, device=grad.device)
        for ky in range(kh):
            for kx in range(kw):
                _tap(gy, ky, kx, stride, ho, wo, ky * kw + kx).copy_(g)
        return gy, None, None, None


def single_channel_conv2d(x, weight, bias=None, stride=1, padding=0):
    """``F.conv2d(x, weight, bias, stride, padding)`` for one input or one output channel, as 1x1 work.

    Square stride and zero padding given as ints; groups and dilation 1.
    """
    cout, cin, kh, kw = weight.shape
    if cin != 1 and cout != 1:
        raise ValueError("single_channel_conv2d needs one input or one output channel")
    if padding:
        x = F.pad(x, (padding,) * 4)
    if cin == 1:
        dtype = _autocast_dtype(x.device.type)
        if dtype is not None and x.dtype == torch.float32:
            x = x.to(dtype)  # the cast autocast would make of the 1x1 input, on k² times fewer values
        taps = _StackTaps.apply(x, kh, kw, stride)
        return F.conv2d(taps, weight.reshape(cout, kh * kw, 1, 1), bias)
    y = F.conv2d(x, weight[0].permute(1, 2, 0).reshape(kh * kw, cin, 1, 1))
    out = _SumTaps.apply(y, kh, kw, stride)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(1, 1, 1, 1)
    return out


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs one-channel convolutions on a CPU through :func:`single_channel_conv2d`."""

    def _stacked(self, x):
        if x.device.type != "cpu" or self.groups != 1 or self.padding_mode != "zeros":
            return False
        if self.dilation != (1, 1) or isinstance(self.padding, str):
            return False
        if self.stride[0] != self.stride[1] or self.padding[0] != self.padding[1]:
            return False
        if self.out_channels == 1:
            return True
        return self.in_channels == 1 and self.out_channels >= MIN_STACKED_CHANNELS

    def forward(self, x):
        if self._stacked(x):
            return single_channel_conv2d(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)


class ReflectionPad2d(nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` that pads a low-precision tensor in its own dtype under CPU autocast."""

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype != torch.float32 and _autocast_dtype("cpu") is not None:
            with torch.autocast("cpu", enabled=False):
                return super().forward(x)
        return super().forward(x)
