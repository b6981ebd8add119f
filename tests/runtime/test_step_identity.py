"""Generation, step and CFG-branch identity from real calling patterns (issue 10): the tracker either
knows the step or says it does not, and no pattern grows its state without bound."""
import pytest
import torch

from ditcompile.runtime.steps import MAX_BRANCHES, MAX_EVALUATIONS, Observation, StepTracker, observe_call

COND, UNCOND, IMAGE = b"cond", b"uncond", b"image"


def track(calls, tracker=None):
    """(generation, step, branch) of each (timestep, conditioning) call."""
    tracker = tracker or StepTracker()
    out = []
    for t, cond in calls:
        info = tracker.observe(Observation(t, cond))
        out.append((info.generation, info.step, info.branch))
    return out


def test_cfg_as_two_calls_then_a_new_run():
    calls = [(999, COND), (999, UNCOND), (500, COND), (500, UNCOND), (100, COND), (100, UNCOND), (999, COND)]
    assert track(calls) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0)]


def test_cfg_in_one_batch_and_three_branches():
    assert track([(999, COND), (500, COND), (100, COND)]) == [(0, 0, 0), (0, 1, 0), (0, 2, 0)]
    calls = [(999, COND), (999, UNCOND), (999, IMAGE), (500, COND), (500, UNCOND), (500, IMAGE)]
    assert track(calls) == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)]


def test_a_branch_keeps_its_index_when_the_call_order_changes():
    calls = [(999, COND), (999, UNCOND), (500, UNCOND), (500, COND)]
    assert track(calls) == [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)]


def test_a_single_step_warm_up_run_before_the_real_one():
    calls = [(999, COND)] + [(999, COND), (999, UNCOND), (500, COND), (500, UNCOND)]
    assert track(calls) == [(0, 0, 0), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]


@pytest.mark.parametrize("restart_t", [999, 500])
def test_an_interrupted_run_followed_by_a_new_one(restart_t):
    calls = [(999, COND), (999, UNCOND), (500, COND)] + [(restart_t, COND), (restart_t, UNCOND)]
    out = track(calls)
    if restart_t == 999:  # the timestep went up: a new generation
        assert out[3:] == [(1, 0, 0), (1, 0, 1)]
    else:  # interrupted after the conditional call of step 1: the unconditional one completes the step
        assert out[3:] == [(0, 1, 0), (0, 1, 1)]


def test_second_order_samplers_repeat_each_timestep_within_one_generation():
    heun = [999, 800, 800, 600, 600, 400, 400]  # diffusers' HeunDiscreteScheduler order
    assert track([(t, COND) for t in heun]) == [(0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 2, 0), (0, 2, 0),
                                                (0, 3, 0), (0, 3, 0)]
    stuck = [(999, COND), (800, COND)] + [(800, COND)] * MAX_EVALUATIONS  # far more evaluations: a new run
    assert track(stuck)[-1][0] == 1


def test_repeated_timesteps_start_generations_instead_of_branches():
    tracker = StepTracker()
    same = track([(500, COND)] * 200, tracker)  # a 1-step model or a server at one timestep
    assert same == [(g, 0, 0) for g in range(200)]
    tracker = StepTracker()
    prompts = track([(500, bytes([i])) for i in range(3 * MAX_BRANCHES)], tracker)  # one call per prompt
    assert max(b for _, _, b in prompts) == MAX_BRANCHES - 1  # never more branches than the cap
    assert prompts[-1][0] == 2 and len(tracker._branches) <= MAX_BRANCHES


def test_reset_starts_a_generation_at_the_same_timestep():
    tracker = StepTracker()
    track([(999, COND), (999, UNCOND)], tracker)
    tracker.reset()
    assert track([(999, UNCOND)], tracker) == [(1, 0, 0)]


def test_timestep_shapes_and_unknown_steps():
    main, text = torch.randn(2, 4, 8), torch.randn(2, 3, 5)
    scalar = observe_call(torch.tensor(500.0), main, [text])
    batch = observe_call(torch.full((2,), 500.0), main, [text])
    per_token = observe_call(torch.full((2, 16), 500.0), main, [text])
    assert scalar.timestep == batch.timestep == per_token.timestep == 500.0
    assert scalar.shape == (2, 4, 8) and scalar.condition == batch.condition
    assert observe_call(500, main, [text]).timestep == 500.0
    differ = observe_call(torch.tensor([500.0, 400.0]), main, [text])
    assert differ.timestep is None and "different values (400 .. 500)" in differ.unknown_reason
    none = observe_call(None, main, [text])
    assert none.timestep is None and none.unknown_reason == "no timestep input"
    later = observe_call(torch.full((2,), 400.0), main, [text])
    tracker = StepTracker()
    infos = [tracker.observe(o) for o in (batch, differ, later)]
    assert infos[1].step is None and "different values" in infos[1].unknown_reason
    assert (infos[2].generation, infos[2].step) == (0, 1)  # an unknown call does not move the count


def test_conditioning_fingerprints_tell_branches_apart_and_ignore_the_latents():
    text = torch.randn(2, 77, 64)
    a = observe_call(torch.tensor(1.0), torch.randn(2, 4), [text])
    b = observe_call(torch.tensor(1.0), torch.randn(2, 4), [text.clone()])
    c = observe_call(torch.tensor(1.0), torch.randn(2, 4), [torch.zeros_like(text)])
    d = observe_call(torch.tensor(1.0), torch.randn(2, 4), [text[:, :70]])
    assert a.condition == b.condition  # same conditioning, other latents: the same branch
    assert len({a.condition, c.condition, d.condition}) == 3  # other values or another length


def test_timesteps_that_rise_from_step_to_step_are_learned():
    rising = [(t, c) for t in (0.1, 0.2, 0.3, 0.4, 0.5) for c in (COND, UNCOND)]  # e.g. Lumina-2's 1 - t
    tracker = StepTracker()
    out = track(rising, tracker)
    assert tracker.direction == 1
    # the first two steps look like one-step runs until the third confirms the direction
    assert out[4:] == [(1, 1, 0), (1, 1, 1), (1, 2, 0), (1, 2, 1), (1, 3, 0), (1, 3, 1)]
    assert track([(0.1, COND)], tracker) == [(2, 0, 0)]  # a fall now starts a new run


def test_low_precision_timesteps_that_round_to_one_value_never_merge_two_runs():
    bf16 = [float(torch.tensor(t, dtype=torch.bfloat16)) for t in (1000.0, 993.0, 991.0, 980.0)]
    assert bf16[1] == bf16[2]  # two real steps, one bf16 value
    out = track([(t, c) for t in bf16 for c in (COND, UNCOND)])
    assert {g for g, _, _ in out} == {0} and [s for _, s, _ in out] == [0, 0, 1, 1, 1, 1, 2, 2]


def test_per_token_timesteps_with_clean_conditioning_tokens_give_the_noisy_tokens_step():
    tokens = torch.full((1, 24), 700.0)
    tokens[:, :6] = 0.0  # the first frame is the clean image (image-to-video)
    assert observe_call(tokens, None, []).timestep == 700.0


def test_an_unknown_call_then_a_known_one_is_one_generation():
    tracker = StepTracker()
    infos = [tracker.observe(o) for o in (Observation(None, COND, unknown_reason="x"), Observation(999, COND),
                                           Observation(500, COND))]
    assert [(i.generation, i.step) for i in infos] == [(0, None), (0, 0), (0, 1)]


def test_the_branch_cap_is_noted():
    tracker = StepTracker()
    infos = [tracker.observe(Observation(999 - i, bytes([i]))) for i in range(MAX_BRANCHES + 1)]
    assert infos[-1].note is not None and "more than 8 different conditionings" in infos[-1].note
    assert infos[-1].generation == 1


def test_a_difference_far_from_any_sample_point_still_tells_branches_apart():
    text = torch.randn(1, 512 + 17, 64)
    uncond = text.clone()
    uncond[:, 512:] = 0  # only the appended image tokens differ
    assert observe_call(1.0, None, [text]).condition != observe_call(1.0, None, [uncond]).condition
    nudged = text.clone()
    nudged[0, 300, 7] += 1e-3  # a tiny change in one element
    assert observe_call(1.0, None, [text]).condition != observe_call(1.0, None, [nudged]).condition
    assert observe_call(1.0, None, [text]).condition == observe_call(1.0, None, [text.clone()]).condition
