"""Diffusion-loss weightings and the image-first exclusion of `losses.transfusion_loss`."""

import unittest

import torch

from transfusion_ref.config import preset
from transfusion_ref.diffusion import Schedule
from transfusion_ref.losses import min_snr_weights, snr_cap_weights, transfusion_loss
from transfusion_ref.model import TransfusionModel


def coefficients(ts):
    cfg = preset("tiny").diffusion
    cfg.prediction = "v"
    alpha, sigma, _ = Schedule(cfg).coefficients(torch.tensor(ts, dtype=torch.float64))
    return alpha, sigma


class Weights(unittest.TestCase):
    def test_min_snr_is_min_snr_gamma_in_x0_space(self):
        alpha, sigma = coefficients([10.0, 500.0, 990.0])
        snr = (alpha / sigma).square()
        for pred, native in (("v", snr + 1), ("epsilon", snr), ("x0", torch.ones_like(snr))):
            w = min_snr_weights(pred, alpha, sigma, 5.0)
            torch.testing.assert_close(w * native, torch.clamp(snr, max=5.0), rtol=1e-5, atol=1e-6)

    def test_snr_cap_turns_down_only_nearly_clean_samples(self):
        alpha, sigma = coefficients([5.0, 200.0, 500.0, 800.0, 990.0])
        w = snr_cap_weights("v", alpha, sigma, 5.0)
        snr = (alpha / sigma).square()
        torch.testing.assert_close(w * (snr + 1), torch.clamp(snr + 1, max=5.0), rtol=1e-5,
                                   atol=1e-6)
        self.assertTrue(torch.all(w[snr + 1 <= 5.0] == 1.0))   # high noise: full weight
        self.assertLess(w[0].item(), 0.01)                       # t = 5: nearly clean
        # Min-SNR with v-prediction also lowers the high-noise weights; the cap does not.
        self.assertLess(min_snr_weights("v", alpha, sigma, 5.0)[-1].item(), 0.01)
        self.assertEqual(w[-1].item(), 1.0)


class Loss(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.model = TransfusionModel(preset("tiny")).eval()
        cfg = preset("tiny").diffusion
        cfg.prediction = "v"
        self.schedule = Schedule(cfg)
        self.latents = torch.randn(6, 4, 8, 8)
        self.captions = [[10, 11, 12]] * 6

    def loss(self, **kw):
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            return transfusion_loss(self.model, self.schedule, self.latents, self.captions, gen,
                                    lam=5.0, image_first=0.5, drop=0.0, caption_max_t=0.5, **kw)

    def test_defaults_unchanged_and_weightings_change_l_diff(self):
        base = self.loss()[1]["diff"]
        self.assertEqual(self.loss(caption_diffusion=True)[1]["diff"], base)
        self.assertNotAlmostEqual(self.loss(snr_cap=5.0)[1]["diff"], base)
        self.assertNotAlmostEqual(self.loss(caption_diffusion=False)[1]["diff"], base)

    def test_both_weightings_are_refused(self):
        with self.assertRaises(ValueError):
            self.loss(min_snr_gamma=5.0, snr_cap=5.0)


if __name__ == "__main__":
    unittest.main()
