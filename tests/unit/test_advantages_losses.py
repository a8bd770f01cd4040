"""RL maths against hand-computed values."""

import math

import pytest
import torch

from ponder.learner.advantages import grpo_advantages, process_advantages
from ponder.learner.batching import pack
from ponder.types import Problem, Trajectory
from ponder.learner.losses import behaviour_correction, clipped_surrogate, entropy, kl_penalty, token_logprobs


def test_grpo_advantages_by_hand():
    # group 0: rewards 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3); group 1: 2, 4 -> mean 3, std sqrt(2)
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0]), torch.tensor([0, 0, 0, 1, 1]), eps=0.0)
    s0, s1 = math.sqrt(1 / 3), math.sqrt(2)
    expected = [(2 / 3) / s0, (-1 / 3) / s0, (-1 / 3) / s0, -1 / s1, 1 / s1]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_advantages_without_std_scaling_is_centered_reward():
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 3.0, 3.0]), torch.tensor([7, 7, 9, 9]), norm_by_std=False)
    assert adv.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_uniform_group_and_singleton_get_zero_advantage():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 5.0]), torch.tensor([0, 0, 1]))
    assert adv.tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_clipped_surrogate_by_hand():
    # two tokens of one sequence with advantage +1 and two of a sequence with advantage -1
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.1]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss, m = clipped_surrogate(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, normaliser=4.0)
    # A=+1: max(-1.5, -1.28) = -1.28 (clipped); max(-0.9, -0.9) = -0.9
    # A=-1: max(0.5, 0.8) = 0.8 (clipped); max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.28 - 0.9 + 0.8 + 1.1) / 4, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(0.5)


def test_clipped_surrogate_gradient_is_policy_gradient_at_ratio_one():
    logp = torch.zeros(1, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = clipped_surrogate(logp, logp.detach(), torch.tensor([2.0]), mask, 0.2, 0.2, normaliser=2.0)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-1.0, -1.0, 0.0])  # -A / normaliser on unmasked tokens


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    lr = math.log(2.0)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(lr)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * lr**2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + lr)
    assert kl_penalty(ref, ref, "k3").item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_penalty(logp, ref, "k4")


def test_token_logprobs_and_entropy_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
    assert entropy(logits).item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_behaviour_correction_modes_by_hand():
    """π_prox/μ per token: 0.5/0.1 = 5, 0.9/0.9 = 1, 0.2/0.4 = 0.5; cap 2."""
    prox = torch.log(torch.tensor([[0.5, 0.9, 0.2]]))
    behaviour = torch.log(torch.tensor([[0.1, 0.9, 0.4]]))
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    w, keep, m = behaviour_correction(prox, behaviour, mask, "none", cap=2.0)
    assert w.tolist() == [[1.0, 1.0, 1.0]] and keep.tolist() == mask.tolist()
    w, keep, m = behaviour_correction(prox, behaviour, mask, "tis", cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 1.0, 0.5]])) and keep.tolist() == mask.tolist()
    w, keep, m = behaviour_correction(prox, behaviour, mask, "decoupled", cap=2.0)
    assert torch.allclose(w, torch.tensor([[5.0, 1.0, 0.5]])) and keep.tolist() == [[0.0, 1.0, 1.0]]
    assert m["is_weight_mean"] == pytest.approx((5 + 1 + 0.5) / 3, rel=1e-5)
    assert m["is_weight_max"] == pytest.approx(5.0, rel=1e-5) and m["is_capped_frac"] == pytest.approx(1 / 3)
    # k3 estimate of KL(μ || π_prox) from μ's samples: r = π/μ, k3 = r - 1 - log r, averaged
    expected = sum(r - 1 - math.log(r) for r in (5.0, 1.0, 0.5)) / 3
    assert m["behaviour_kl"] == pytest.approx(expected, rel=1e-5)


def test_importance_weights_scale_the_surrogate_per_token():
    logp = torch.zeros(1, 2, requires_grad=True)
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = clipped_surrogate(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.28, 2.0, weights)
    loss.backward()
    # at ratio 1 the gradient of -A·w·r / N with respect to logp is -A·w / N
    assert logp.grad.tolist() == [[-1.0, -0.25]]


def test_process_advantages_by_hand():
    """Group of two: steps scored 3, 1 | 2. Pooled mean 2, population std sqrt(2/3); normalised
    +1.2247, -1.2247 | 0. Tokens get the sum over their own step and the later ones."""
    out = process_advantages([[(2, 3.0), (3, 1.0)], [(1, 2.0)]], [5, 5], [3, 2])
    z = 1 / math.sqrt(2 / 3)
    assert out[0].tolist() == pytest.approx([0.0, 0.0, -z], abs=1e-5)
    assert out[1].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    # a group whose steps all score the same carries no process signal, and other groups are separate
    flat = process_advantages([[(1, 0.5)], [(1, 0.5)], [(1, 1.0), (2, 0.0)]], [0, 0, 1], [1, 1, 2])
    assert [t.tolist() for t in flat[:2]] == [[0.0], [0.0]]
    assert flat[2].tolist() == pytest.approx([0.0, -1.0], abs=1e-5)


def test_dense_advantages_sit_on_response_tokens_and_reach_the_loss():
    traj = Trajectory(0, 0, Problem("q", "a"), [5, 6], [7, 8, 9], "xyz", [-1.0, -1.0, -1.0], "stop", 0)
    packed = pack([traj], torch.tensor([0.5]), pad_id=0, dense=[torch.tensor([1.0, 0.0, -1.0])])
    # targets are shifted left by one: the response's 3 tokens are targets 1..3 of the 4
    assert packed.advantages.tolist() == [[0.0, 1.5, 0.5, -0.5]]
    logp = torch.zeros(1, 4)
    loss, _ = clipped_surrogate(logp, logp, packed.advantages, packed.response_mask, 0.2, 0.2, normaliser=3.0)
    assert float(loss) == pytest.approx(-(1.5 + 0.5 - 0.5) / 3)  # ratio 1: the loss is minus the mean advantage
