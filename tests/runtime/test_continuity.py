"""The latents test (`runtime.continuity`) against its definition: a continuation is a linear
combination of the run's recent latents and outputs; fresh noise is not."""
import pytest
import torch

from ditcompile.runtime.continuity import (
    WHOLE, LatentView, continues, extra_part, latent_sample, latent_view, tolerance_for)
from ditcompile.runtime.steps import Observation, StepTracker, observe_call


def test_latent_view_relates_an_output_to_the_main_input():
    assert latent_view((2, 4, 3, 16, 24), (2, 4, 3, 16, 24)) == WHOLE
    assert latent_view((1, 36, 3, 16, 24), (1, 16, 3, 16, 24)) == LatentView(1, 16, 36)  # image channels in
    assert latent_view((1, 4, 32, 32), (1, 8, 32, 32)) == LatentView(1, 4, 4)            # learned sigma out
    assert latent_view((1, 4096, 64), (1, 4096, 64)) == WHOLE                            # packed tokens
    assert latent_view((1, 4, 3, 16, 24), (1, 288, 64)) is None                           # another rank
    assert latent_view((1, 4, 16, 24), (1, 8, 8, 24)) is None                             # two sizes differ
    assert latent_view((2, 4, 16, 24), (1, 4, 16, 24)) is None                            # another batch


def test_samples_are_fixed_positions_of_the_predicted_part_only():
    x = torch.randn(2, 8, 3, 16, 24)
    x[:, 4:] = float("nan")  # the conditioning channels must never be sampled
    view = LatentView(1, 4, 8)
    a = latent_sample(x, view)
    assert a.shape == (2, 2048) and torch.isfinite(a).all()
    assert torch.equal(latent_sample(x.clone(), view), a)  # the same positions for the same shape
    strided = torch.randn(2, 3, 16, 24, 8).permute(0, 4, 1, 2, 3)  # non-contiguous
    assert torch.equal(latent_sample(strided, WHOLE), latent_sample(strided.contiguous(), WHOLE))
    values = set(x[:, :4].flatten().tolist())
    assert set(a.flatten().tolist()) <= values
    assert extra_part(x, view).data_ptr() == x[:, 4:].data_ptr() and extra_part(x, view).shape == (2, 4, 3, 16, 24)
    assert extra_part(x, WHOLE) is None
    small = torch.randn(1, 4, 2, 2)
    assert latent_sample(small, WHOLE).shape == (1, 16)  # fewer elements than samples: all of them


def rows(*tensors):
    return [t.reshape(-1).double() for t in tensors]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sampler_steps_continue_and_fresh_noise_does_not(dtype):
    g = torch.Generator().manual_seed(0)
    x, v_cond, v_uncond = (torch.randn(1, 4, 3, 16, 24, generator=g) for _ in range(3))
    sample = lambda t: latent_sample(t.to(dtype), WHOLE).double()  # noqa: E731
    basis = [sample(x)[0], sample(v_cond)[0], sample(v_uncond)[0]]
    tol = tolerance_for(dtype)
    euler = x - 0.02 * (v_uncond + 5.0 * (v_cond - v_uncond))  # one CFG Euler step
    assert continues(sample(euler), basis, tol) is True
    assert continues(sample(torch.randn(x.shape, generator=g)), basis, tol) is False  # a new run
    ancestral = euler + 0.05 * torch.randn(x.shape, generator=g)
    assert continues(sample(ancestral), basis, tol) is False  # fresh noise every step
    same_seed_later = x - 0.02 * v_cond + 0.3 * torch.randn(x.shape, generator=g)  # img2img-like restart
    assert continues(sample(same_seed_later), basis, tol) is False
    assert continues(sample(euler), [], tol) is None


def obs(t, x, cond=b"c"):
    sample = latent_sample(x, WHOLE).double()
    return Observation(t, cond, tuple(x.shape), latents=sample)


def test_the_tracker_uses_the_latents_to_tell_evaluations_new_runs_and_steps_apart():
    g = torch.Generator().manual_seed(1)
    tracker, x = StepTracker(), torch.randn(1, 4, 3, 16, 24, generator=g)

    def call(t, latents, out):
        info = tracker.observe(obs(t, latents))
        tracker.record_output(info, latent_sample(out, WHOLE))
        tracker._take_output(tracker.take_pending().double())  # what the next observe_call copies
        return info.generation, info.step

    v = torch.randn(x.shape, generator=g)
    assert call(999.0, x, v) == (0, 0)
    x_pred = x - 0.1 * v
    v2 = torch.randn(x.shape, generator=g)
    assert call(900.0, x_pred, v2) == (0, 1)
    x_heun = x - 0.05 * (v + v2)  # Heun's corrected latents, evaluated at the same timestep
    assert call(900.0, x_heun, torch.randn(x.shape, generator=g)) == (0, 1)
    other_seed = torch.randn(x.shape, generator=g)  # another run at the same timestep
    assert call(900.0, other_seed, torch.randn(x.shape, generator=g)) == (1, 0)
    lower = torch.randn(x.shape, generator=g)  # a new run lower down
    assert call(500.0, lower, torch.randn(x.shape, generator=g)) == (2, 0)
    assert tracker.events["generation: latents do not continue the run"] == 2


def test_a_declared_generation_follows_the_timesteps_whatever_the_latents():
    g = torch.Generator().manual_seed(2)
    tracker = StepTracker()
    infos = [tracker.observe(obs(t, torch.randn(1, 4, 8, 8, generator=g)), declared=True)
             for t in (999.0, 900.0, 900.0, 800.0, 850.0)]
    assert [(i.generation, i.step) for i in infos] == [(0, 0), (0, 1), (0, 1), (0, 2), (0, 3)]


def test_observe_call_copies_latents_and_the_pending_output_in_one_go():
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    o = observe_call(torch.tensor([500.0, 500.0]), x, [torch.randn(2, 7)], WHOLE, latent_sample(out, WHOLE))
    assert o.timestep == 500.0 and o.latents.dtype == torch.float64
    torch.testing.assert_close(o.latents, latent_sample(x, WHOLE).double())
    torch.testing.assert_close(o.previous_output, latent_sample(out, WHOLE).double())
    assert observe_call(torch.tensor(1.0), x, [], None).latents is None  # no comparable output
