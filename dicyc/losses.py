"""Losses shared by the training methods, and CycleGAN's image pool.

Each method (``dicyc.methods``) composes these; none of them is specific to one method.
"""

import torch
import torch.nn.functional as F


def lsgan_loss(prediction, target_is_real):
    """Least-squares GAN loss (Mao et al. 2017), as CycleGAN uses: MSE to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def discriminator_loss(discriminator, real, fake):
    """LSGAN discriminator objective, halved as in the reference to slow D relative to G."""
    return 0.5 * (lsgan_loss(discriminator(real), True) + lsgan_loss(discriminator(fake.detach()), False))


def l1(a, b):
    """Mean absolute difference: the cycle and identity losses."""
    return F.l1_loss(a, b)


def histogram_distance(prediction, reference):
    """1-D Wasserstein distance between each image's intensity histogram and its reference's.

    Per sample: the mean absolute difference of the two images' sorted values, which is W1 of
    their intensity distributions. A deformation moves intensities but keeps their distribution
    (up to the area it stretches), so this compares appearance and cannot see where anatomy sits.
    """
    n = prediction.shape[0]
    return l1(prediction.reshape(n, -1).sort(dim=1).values, reference.reshape(n, -1).sort(dim=1).values)


class ImagePool:
    """A history of generated images (Shrivastava et al. 2017): D sees past fakes too.

    Once full, each query returns, with probability 1/2 per image, a stored older fake
    (replacing it with the new one) instead of the new one. Randomness comes from a
    ``torch.Generator`` so a resumed run continues the same stream.
    """

    def __init__(self, size=50, generator=None):
        self.size = int(size)
        self.images = []
        self.generator = generator

    def query(self, images):
        if self.size == 0:
            return images.detach().float()
        out = []
        for image in images.detach().float():  # float32 whatever autocast produced: checkpoints stay fp32
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.generator).item())
                out.append(self.images[idx].clone())
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_tensor(self):
        """The stored images as one tensor (N, C, H, W), for checkpoints."""
        if not self.images:
            return torch.zeros((0,))
        return torch.cat(self.images, 0).cpu()

    def load_state_tensor(self, tensor, device):
        self.images = [] if tensor.numel() == 0 else [t.unsqueeze(0).to(device) for t in tensor]
