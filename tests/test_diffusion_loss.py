"""The U-Net's training objective: SD's epsilon loss, optionally Min-SNR-gamma weighted."""

from types import SimpleNamespace

import pytest
import torch

from policykit.shapes.architecture import build_training_scheduler
from policykit.shapes.train import diffusion_loss


class Echo(torch.nn.Module):
    """A stand-in U-Net that predicts a fixed tensor and records the timesteps it was asked about."""

    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, noisy, timesteps, hidden):
        self.timesteps = timesteps
        return SimpleNamespace(sample=self.prediction)


def noise_and_timesteps(shape, seed):
    """What diffusion_loss draws from a generator seeded ``seed``: the noise, then the timesteps."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    return noise, torch.randint(0, 1000, (shape[0],), generator=generator)


def test_gamma_zero_is_the_plain_mean_squared_error():
    scheduler, shape = build_training_scheduler(), (6, 4, 3, 3)
    prediction = torch.randn(shape)
    noise, _ = noise_and_timesteps(shape, 1)
    loss = diffusion_loss(Echo(prediction), scheduler, torch.zeros(shape), None, torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(((prediction - noise) ** 2).mean().item(), rel=1e-6)


def test_min_snr_weights_each_sample_by_min_snr_gamma_over_snr():
    scheduler, shape, gamma = build_training_scheduler(), (64, 4, 3, 3), 5.0
    prediction = torch.randn(shape)
    noise, timesteps = noise_and_timesteps(shape, 2)
    unet = Echo(prediction)
    loss = diffusion_loss(unet, scheduler, torch.zeros(shape), None, torch.Generator().manual_seed(2), gamma)
    assert torch.equal(unet.timesteps, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    per_sample = ((prediction - noise) ** 2).mean(dim=(1, 2, 3)).double()
    # Written out per sample: weight 1 where SNR <= gamma (noisy), gamma / SNR where the image is clearer.
    weights = [1.0 if s <= gamma else gamma / s for s in snr.tolist()]
    expected = sum(w * e for w, e in zip(weights, per_sample.tolist())) / len(weights)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0 < sum(w < 1 for w in weights) < len(weights)  # both kinds of timestep were drawn
    plain = diffusion_loss(Echo(prediction), scheduler, torch.zeros(shape), None, torch.Generator().manual_seed(2))
    assert loss.item() < plain.item()
