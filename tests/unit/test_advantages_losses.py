"""RL maths against hand-computed values."""

import math

import pytest
import torch

from ponder.learner.advantages import (batch_normalised, gae, grpo_advantages, kl_returns, outcome_advantages,
                                       process_advantages, rloo_advantages, sample_rewards, token_moments)
from ponder.learner.batching import micro_batches, pack
from ponder.platform.config import AlgoConfig
from ponder.types import Problem, Trajectory
from ponder.learner.losses import (behaviour_correction, clipped_surrogate, entropy, kl_penalty, sequence_surrogate,
                                   token_logprobs, value_loss)


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


def test_rloo_advantages_by_hand():
    # group 0: 1, 0, 0 -> baselines (0+0)/2, (1+0)/2, (1+0)/2; group 1: 2, 4 -> baselines 4, 2; group 2 alone
    adv = rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 4.0, 7.0]), torch.tensor([0, 0, 0, 1, 1, 2]))
    assert adv.tolist() == pytest.approx([1.0, -0.5, -0.5, -2.0, 2.0, 0.0])


def test_outcome_advantages_follow_the_algorithm():
    rewards, groups = torch.tensor([1.0, 0.0, 3.0, 3.0]), torch.tensor([0, 0, 1, 1])
    assert outcome_advantages(rewards, groups, AlgoConfig(name="rloo")).tolist() == pytest.approx([1, -1, 0, 0])
    assert outcome_advantages(rewards, groups, AlgoConfig(name="reinforce_pp")).tolist() == [1.0, 0.0, 3.0, 3.0]
    dr = AlgoConfig(name="gspo", norm_adv_by_std=False)  # GSPO takes GRPO's group advantages, Dr. GRPO switch too
    assert outcome_advantages(rewards, groups, dr).tolist() == pytest.approx([0.5, -0.5, 0, 0])


def test_reinforce_pp_returns_with_kl_and_batch_normalisation_by_hand():
    # two samples, rewards 1 and 0 on their 2 and 1 response targets; per-token KL 0.5, 0.25 | 1.0; coef 0.1
    rewards = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    kl = torch.tensor([[0.5, 0.25, 3.0], [1.0, 2.0, 2.0]])
    returns = kl_returns(rewards, kl, mask, coef=0.1)
    assert returns.flatten().tolist() == pytest.approx([1 - 0.075, 1 - 0.025, 0.0, -0.1, 0.0, 0.0])
    # normalised over all three trained tokens, across "ranks" (moments summed from two halves)
    moments = token_moments(returns[:1], mask[:1]) + token_moments(returns[1:], mask[1:])
    values = [0.925, 0.975, -0.1]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    out = batch_normalised(returns, mask, moments, eps=0.0)
    assert out[mask != 0].tolist() == pytest.approx([(v - mean) / std for v in values], rel=1e-5)
    assert out[mask == 0].tolist() == [0.0, 0.0, 0.0]


def test_gspo_sequence_ratio_clip_and_gradient_by_hand():
    """Sequence 0: token ratios 1.2 and 0.9 (geometric mean sqrt(1.08) = 1.0392), A = +1, band [0.99, 1.01] ->
    clipped at 1.01, no gradient. Sequence 1: ratio 1 on its 3 tokens, A = -2 -> loss 2 and gradient -A/(3·2)
    on each token. Normaliser: 2 sequences."""
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.2, 0.9, 1.0], [1.0, 1.0, 1.0]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    seq = torch.tensor([[0, 0, -1], [1, 1, 1]])
    loss, m = sequence_surrogate(logp, old, torch.tensor([1.0, -2.0]), mask, seq, 0.01, 0.01, normaliser=2.0)
    assert float(loss.detach()) == pytest.approx((-1.01 + 2.0) / 2, abs=1e-5)
    assert m["clip_frac"] == pytest.approx(0.5) and m["ratio_mean"] == pytest.approx((math.sqrt(1.08) + 1) / 2)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert logp.grad[1].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])  # d/dlogp of (2·s)/3 tokens/2 seqs


def test_gspo_gradient_is_the_sequence_level_one_inside_the_band():
    """Inside the band, the GSPO-token form's gradient equals that of -A·s with s = exp(mean log ratio) itself."""
    torch.manual_seed(0)
    logp = (torch.randn(1, 4) * 0.01).requires_grad_()
    mask = torch.ones(1, 4)
    loss, _ = sequence_surrogate(logp, torch.zeros(1, 4), torch.tensor([0.7]), mask, torch.zeros(1, 4, dtype=torch.long),
                                 0.5, 0.5, normaliser=1.0)
    loss.backward()
    direct = logp.detach().clone().requires_grad_()
    (-0.7 * torch.exp(direct.mean())).backward()
    assert torch.allclose(logp.grad, direct.grad, atol=1e-6)


def test_masked_importance_sampling_by_hand():
    """Ratios π_prox/μ: row 0 = 5, 1, 0.75 (geometric mean 3.75^(1/3) = 1.55); row 1 = 0.25, 0.25 (mean 0.25).
    Band [1/2, 2]: token_mask drops the 5 and both 0.25s; seq_mask keeps row 0 whole and drops row 1."""
    prox = torch.log(torch.tensor([[0.5, 0.9, 0.3], [0.1, 0.1, 0.1]]))
    behaviour = torch.log(torch.tensor([[0.1, 0.9, 0.4], [0.4, 0.4, 0.4]]))
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w, keep, m = behaviour_correction(prox, behaviour, mask, "token_mask", cap=2.0)
    assert w.tolist() == [[1.0] * 3] * 2 and keep.tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert m["is_rejected_frac"] == pytest.approx(3 / 5)
    w, keep, m = behaviour_correction(prox, behaviour, mask, "seq_mask", cap=2.0)
    assert keep.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]] and m["is_rejected_frac"] == pytest.approx(2 / 5)
    # packed: both sequences in one row, told apart by seq_ids -- the same decision
    flat = lambda t: t.reshape(1, -1)  # noqa: E731
    seq = torch.tensor([[0, 0, 0, 1, 1, 1]])
    _, keep, _ = behaviour_correction(flat(prox), flat(behaviour), flat(mask), "seq_mask", cap=2.0, seq_ids=seq)
    assert keep.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="token_mask or seq_mask"):
        behaviour_correction(prox, behaviour, mask, "sequence", cap=2.0)


def test_packed_layout_matches_the_padded_one():
    a = Trajectory(0, 0, Problem("q", "a"), [5, 6], [7, 8], "", [-1.0, -2.0], "stop", 0)
    b = Trajectory(1, 0, Problem("q", "a"), [5], [9, 4, 3], "", [-3.0, -4.0, -5.0], "stop", 0)
    padded = pack([a, b], torch.tensor([1.0, -1.0]), pad_id=0)
    packed = pack([a, b], torch.tensor([1.0, -1.0]), pad_id=0, packed=True)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 5, 9, 4, 3]] and packed.attention_mask is None
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    # a's last token (8) would predict b's first: no target of either sequence
    assert packed.seq_ids.tolist() == [[0, 0, 0, -1, 1, 1, 1]]
    for field in ("response_mask", "behaviour_logprobs", "advantages"):
        rows = getattr(padded, field)
        assert getattr(packed, field)[packed.seq_ids >= 0].tolist() == torch.cat([rows[0, :3], rows[1, :3]]).tolist()
    assert packed.response_mask.sum() == padded.response_mask.sum() == 5
    assert padded.num_trained_sequences == packed.num_trained_sequences == 2


def test_token_budget_micro_batches():
    assert micro_batches([1, 1, 1], size=2) == [[0, 1], [2]]
    # padded cost is rows × longest: 3 × 4 > 10 closes the first micro-batch; a too-long sequence goes alone
    assert micro_batches([2, 3, 4, 4, 20], size=64, token_budget=10) == [[0, 1], [2, 3], [4]]
    assert micro_batches([2, 3, 4, 4, 20], size=64, token_budget=10, packed=True) == [[0, 1, 2], [3], [4]]


def test_gae_by_hand_with_discount_and_two_packed_sequences_around_an_environment_token():
    """Row: sequence 0 = tokens a, b, (environment token), c with values 1, 2, -, 3 and reward 2; sequence 1 = one
    token, value 0.5, reward 0. γ = 0.9, λ = 0.8. Sequence 0 over its trained tokens a, b, c:
    δ_c = 2 - 3 = -1, δ_b = 0 + 0.9·3 - 2 = 0.7, δ_a = 0 + 0.9·2 - 1 = 0.8;
    A_c = -1, A_b = 0.7 + 0.72·(-1) = -0.02, A_a = 0.8 + 0.72·(-0.02) = 0.7856. Sequence 1: A = 0 - 0.5."""
    outcome = torch.tensor([[2.0, 2.0, 2.0, 2.0, 0.0]])
    values = torch.tensor([[1.0, 2.0, 99.0, 3.0, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])
    seq = torch.tensor([[0, 0, 0, 0, 1]])
    adv, ret = gae(outcome, values, mask, seq, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.7856, -0.02, 0.0, -1.0, -0.5], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([1.7856, 1.98, 0.0, 2.0, 0.0], abs=1e-6)
    # λ = 1, γ = 1: the advantage is the Monte-Carlo return (the reward) minus the value
    adv, _ = gae(outcome, values, mask, seq, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([1.0, 0.0, 0.0, -1.0, -0.5], abs=1e-6)


def test_clipped_value_loss_by_hand():
    # token 0: V 2 (old 0, clip 0.2 -> 0.2), R 1: max((2-1)^2, (0.2-1)^2) = 1; token 1: V 0 (old 1 -> 0.8), R 0:
    # max(0, 0.64) = 0.64 (clipped larger); token 2 off the mask
    loss, m = value_loss(torch.tensor([[2.0, 0.0, 5.0]]), torch.tensor([[0.0, 1.0, 0.0]]),
                         torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), clip=0.2, normaliser=2.0)
    assert float(loss) == pytest.approx(0.5 * (1.0 + 0.64) / 2)
    assert m["value_clip_frac"] == pytest.approx(0.5)


def test_sample_rewards_shape_and_leave_out_what_is_not_trained():
    def traj(reward, finish="stop", masked=False, length=4):
        return Trajectory(0, 0, Problem("q", "a"), [1], [2] * length, "", [0.0] * length, finish, 0, reward=reward,
                          masked=masked, max_tokens=10)

    rewards, trained = sample_rewards([traj(1.0), traj(1.0, masked=True), traj(1.0, "length", length=10)],
                                      AlgoConfig(overlong_filter=True))
    assert rewards.tolist() == [1.0, 0.0, 0.0] and trained == [True, False, False]
    rewards, _ = sample_rewards([traj(1.0, length=10)], AlgoConfig(length_penalty=0.5))
    assert rewards.tolist() == [0.5]  # 1 - 0.5 · 10/10
