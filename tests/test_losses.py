"""Golden values worked out by hand (the arithmetic is in the comments) and properties."""

import math

import pytest
import torch

from rakd.losses import (
    LOSSES,
    fkl_loss,
    gkd_loss,
    group_advantages,
    grpo_kl_loss,
    grpo_loss,
    opd_loss,
    sft_loss,
    trrd_loss,
)

L = math.log


def t(*values):
    return torch.tensor([list(values)], dtype=torch.float64)


ONES = t(1.0, 1.0)


def test_trrd_golden_seq_mean():
    # token 1: lp-old = 0, lp-teacher = log 2 -> log rho = 0.5*log 2 -> rho = sqrt 2 = 1.41421
    #          A = +1: min(1.41421, clip to 1.28) = 1.28 -> loss -1.28 (high clip binds)
    # token 2: lp-old = log .8, lp-teacher = log .5 -> rho = sqrt(.8*.5) = 0.632456
    #          min(0.632456, clip to 0.8) = 0.632456 -> loss -0.632456
    # seq_mean: (-1.28 - 0.632456) / 2 = -0.956228
    lp, old, teacher = t(L(0.5), L(0.4)), t(L(0.5), L(0.5)), t(L(0.25), L(0.8))
    loss, m = trrd_loss(lp, old, teacher, torch.tensor([1.0]), ONES)
    assert loss.item() == pytest.approx(-0.956228, abs=1e-6)
    assert m["clip_high_frac"] == 0.5 and m["clip_low_frac"] == 0.0
    assert m["ratio_mean"] == pytest.approx((math.sqrt(2) + math.sqrt(0.4)) / 2, abs=1e-9)
    assert m["ratio_max"] == pytest.approx(math.sqrt(2), abs=1e-9)
    assert m["teacher_clamp_frac"] == 0.0
    # k3 per token: d = teacher - lp; e^d - d - 1 = (.5 + log 2 - 1) and (2 - log 2 - 1)
    assert m["kl_student_teacher"] == pytest.approx(((0.5 + L(2) - 1) + (2 - L(2) - 1)) / 2, abs=1e-9)


def test_rakd_lower_golden_keeps_the_teacher_term_only_where_it_lowers_the_ratio():
    # the inputs of test_trrd_golden_seq_mean, through the registry (rakd_lower fixes teacher_lowers_only)
    # token 1: lp-old = 0, clamp(lp-teacher) = log 2 > 0 -> GRPO's term 0 instead -> rho = 1; A = +1 -> loss -1
    #          (TRRD's rho sqrt 2 was clipped at 1.28: no gradient)
    # token 2: lp-old = log .8, clamp(lp-teacher) = log .5 < log .8 -> kept -> rho = sqrt(.8*.5) = 0.632456
    # seq_mean: (-1 - 0.632456) / 2 = -0.816228
    lp, old, teacher = t(L(0.5), L(0.4)), t(L(0.5), L(0.5)), t(L(0.25), L(0.8))
    tensors = dict(logprobs=lp, old_logprobs=old, teacher_logprobs=teacher, advantages=torch.tensor([1.0]), mask=ONES)
    spec = LOSSES["rakd_lower"]
    assert "teacher_lowers_only" not in spec.hparams and spec.defaults == LOSSES["rakd"].defaults
    loss, m = spec(tensors, spec.defaults)
    assert loss.item() == pytest.approx(-0.816228, abs=1e-6)
    assert m["clip_high_frac"] == 0.0 and m["teacher_term_frac"] == 0.5
    assert m["ratio_mean"] == pytest.approx((1 + math.sqrt(0.4)) / 2, abs=1e-9)


def test_rakd_lower_never_clips_a_positive_token_before_the_first_update():
    lp, _, teacher, adv, mask = random_tokens()
    _, m = trrd_loss(lp, lp.clone(), teacher, adv.abs() + 0.1, mask, teacher_lowers_only=True)
    _, trrd = trrd_loss(lp, lp.clone(), teacher, adv.abs() + 0.1, mask)
    assert m["ratio_max"] <= 1.0 and m["clip_high_frac"] == 0.0 and trrd["clip_high_frac"] > 0.0


def test_trrd_teacher_clamp():
    # lp - teacher = log 10 = 2.303 > c = 1 -> clamped to 1; lp = old -> log rho = 0.5 * 1
    # rho = e^0.5 = 1.648721; A = -1: min(-1.648721, -clip(1.648721, .8, 1.28)) = -1.648721 -> loss 1.648721
    lp, teacher = t(L(0.5)), t(L(0.05))
    loss, m = trrd_loss(lp, lp.clone(), teacher, torch.tensor([-1.0]), t(1.0))
    assert loss.item() == pytest.approx(math.exp(0.5), abs=1e-6)
    assert m["teacher_clamp_frac"] == 1.0
    # without the clamp rho would be sqrt(10) = 3.162
    loose, _ = trrd_loss(lp, lp.clone(), teacher, torch.tensor([-1.0]), t(1.0), teacher_clamp=10.0)
    assert loose.item() == pytest.approx(math.sqrt(10), abs=1e-6)
    # teacher_clamp None: no clamp at all, and it never binds
    unclamped, m = trrd_loss(lp, lp.clone(), teacher, torch.tensor([-1.0]), t(1.0), teacher_clamp=None)
    assert unclamped.item() == pytest.approx(math.sqrt(10), abs=1e-6) and m["teacher_clamp_frac"] == 0.0


def test_grpo_golden_low_clip_and_token_mean():
    # rho = [1.2, 0.6], A = -1
    # token 1: min(-1.2, -1.2) = -1.2 -> 1.2 ; token 2: min(-0.6, -0.8) = -0.8 -> 0.8 (low clip binds)
    # masked third token ignored; token_mean = (1.2 + 0.8) / 2 = 1.0
    lp, old = t(L(0.6), L(0.3), L(0.9)), t(L(0.5), L(0.5), L(0.1))
    loss, m = grpo_loss(lp, old, torch.tensor([-1.0]), t(1.0, 1.0, 0.0), agg="token_mean")
    assert loss.item() == pytest.approx(1.0, abs=1e-9)
    assert m["clip_low_frac"] == 0.5 and m["ratio_max"] == pytest.approx(1.2)


def test_seq_mean_weights_sequences_equally():
    # seq 1 has one token with loss -1 (rho 1, A 1); seq 2 two tokens with loss +1 each (A -1)
    # seq_mean = (-1 + 1) / 2 = 0 ; token_mean = (-1 + 1 + 1) / 3 = 1/3
    lp = torch.zeros(2, 2, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0])
    assert grpo_loss(lp, lp, adv, mask)[0].item() == pytest.approx(0.0)
    assert grpo_loss(lp, lp, adv, mask, agg="token_mean")[0].item() == pytest.approx(1 / 3)


def test_grpo_kl_golden():
    # pg: rho = 1, A = 2 -> -2 ; k3 with d = log(.25/.5): .5 + log 2 - 1 = 0.193147
    # total = -2 + 0.1 * 0.193147 = -1.980685
    lp = t(L(0.5))
    loss, m = grpo_kl_loss(lp, lp.clone(), t(L(0.25)), torch.tensor([2.0]), t(1.0), kl_coef=0.1)
    assert loss.item() == pytest.approx(-2 + 0.1 * (0.5 + L(2) - 1), abs=1e-9)
    assert m["kl_student_teacher"] == pytest.approx(0.5 + L(2) - 1)


def test_opd_golden():
    # advantage log .25 - log .5 = -log 2; rho = 1 -> loss = log 2, gradient d/dlp = +log 2
    lp = t(L(0.5)).requires_grad_()
    loss, m = opd_loss(lp, lp.detach().clone(), t(L(0.25)), t(1.0))
    loss.backward()
    assert loss.item() == pytest.approx(L(2))
    assert lp.grad.item() == pytest.approx(L(2))
    assert m["reverse_kl"] == pytest.approx(L(2))


def test_sft_golden():
    # (-log .5 - log .25) / 2 = (0.693147 + 1.386294) / 2 = 1.039721
    assert sft_loss(t(L(0.5), L(0.25)), ONES)[0].item() == pytest.approx(1.039721, abs=1e-6)


STUDENT = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)  # probs .5, .5
TEACHER = torch.tensor([[[L(0.75), L(0.25)]]], dtype=torch.float64)  # probs .75, .25


def test_trrd_golden_two_rows_of_different_lengths():
    # row 1: the two tokens above, A = +1: per-token losses -1.28 and -0.632456, row mean -0.956228
    # row 2: one token (the second masked), lp = old = teacher = log .5 -> rho = 1, A = -1: loss +1
    # seq_mean: (-0.956228 + 1) / 2 = 0.021886 ; token_mean: (-1.28 - 0.632456 + 1) / 3 = -0.304152
    lp = torch.cat([t(L(0.5), L(0.4)), t(L(0.5), L(0.9))])
    old = torch.cat([t(L(0.5), L(0.5)), t(L(0.5), L(0.1))])
    teacher = torch.cat([t(L(0.25), L(0.8)), t(L(0.5), L(0.1))])
    mask, adv = torch.cat([ONES, t(1.0, 0.0)]), torch.tensor([1.0, -1.0])
    assert trrd_loss(lp, old, teacher, adv, mask)[0].item() == pytest.approx(0.021886, abs=1e-6)
    assert trrd_loss(lp, old, teacher, adv, mask, agg="token_mean")[0].item() == pytest.approx(-0.304152, abs=1e-6)


FORWARD_KL = 0.75 * L(0.75 / 0.5) + 0.25 * L(0.25 / 0.5)  # 0.130812
REVERSE_KL = 0.5 * L(0.5 / 0.75) + 0.5 * L(0.5 / 0.25)  # 0.143841


def test_fkl_golden():
    assert fkl_loss(STUDENT, TEACHER, t(1.0))[0].item() == pytest.approx(FORWARD_KL, abs=1e-9)


def test_gkd_golden_and_ends():
    # M = [.625, .375]; KL(T||M) = .75 log(.75/.625) + .25 log(.25/.375) = 0.035375
    # KL(S||M) = .5 log(.5/.625) + .5 log(.5/.375) = 0.032269 ; JSD_.5 = 0.033822
    kl_tm = 0.75 * L(0.75 / 0.625) + 0.25 * L(0.25 / 0.375)
    kl_sm = 0.5 * L(0.5 / 0.625) + 0.5 * L(0.5 / 0.375)
    assert gkd_loss(STUDENT, TEACHER, t(1.0), beta=0.5)[0].item() == pytest.approx(0.5 * kl_tm + 0.5 * kl_sm, abs=1e-9)
    assert gkd_loss(STUDENT, TEACHER, t(1.0), beta=0.0)[0].item() == pytest.approx(FORWARD_KL, abs=1e-9)
    assert gkd_loss(STUDENT, TEACHER, t(1.0), beta=1.0)[0].item() == pytest.approx(REVERSE_KL, abs=1e-9)
    with pytest.raises(ValueError, match="beta"):
        gkd_loss(STUDENT, TEACHER, t(1.0), beta=1.5)


def test_gkd_golden_at_temperature_two():
    # at tau = 2 the teacher's [.75, .25] becomes [sqrt .75, sqrt .25] / (sqrt .75 + sqrt .25) = [.633975, .366025];
    # the student's [.5, .5] stays. M = [.566987, .433013]; JSD_.5 = (KL(T||M) + KL(S||M)) / 2, not scaled by tau^2
    teacher = [math.sqrt(0.75) / (math.sqrt(0.75) + 0.5), 0.5 / (math.sqrt(0.75) + 0.5)]
    mix = [(teacher[0] + 0.5) / 2, (teacher[1] + 0.5) / 2]
    kl_tm = sum(p * L(p / m) for p, m in zip(teacher, mix))
    kl_sm = sum(0.5 * L(0.5 / m) for m in mix)
    expected = 0.5 * kl_tm + 0.5 * kl_sm  # (0.009283 + 0.009054) / 2 = 0.009169
    assert expected == pytest.approx(0.009169, abs=1e-6)
    got = gkd_loss(STUDENT, TEACHER, t(1.0), beta=0.5, kd_temperature=2.0)[0].item()
    assert got == pytest.approx(expected, abs=1e-9)


def test_group_advantages_golden():
    # group 1 [1,0,0,0]: mean .25, population std sqrt(.1875) = 0.433013
    #   A = .75/.433013 = 1.732051, -.25/.433013 = -0.577350 ; group 2 all equal -> 0, degenerate
    adv, degenerate = group_advantages(torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1]), 4)
    assert adv[:4].tolist() == pytest.approx([1.732051, -0.577350, -0.577350, -0.577350], abs=1e-5)
    assert adv[4:].tolist() == [0.0] * 4
    assert degenerate.tolist() == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)


def random_tokens(seed=0, b=4, t_len=6):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t_len, generator=g, dtype=torch.float64) * 3
    old = lp + 0.3 * torch.randn(b, t_len, generator=g, dtype=torch.float64)
    teacher = lp + torch.randn(b, t_len, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, t_len, generator=g) > 0.3).double()
    return lp, old, teacher, adv, mask


@pytest.mark.parametrize("agg", ["seq_mean", "token_mean"])
def test_trrd_alpha_one_is_exactly_grpo(agg):
    lp, old, teacher, adv, mask = random_tokens()
    a, ma = trrd_loss(lp, old, teacher, adv, mask, alpha=1.0, agg=agg)
    b, mb = grpo_loss(lp, old, adv, mask, agg=agg)
    assert a.item() == b.item()
    assert {k: ma[k] for k in mb} == mb


@pytest.mark.parametrize("name", ["grpo", "rakd", "rakd_lower"])
def test_zero_advantages_give_zero_loss_and_gradient(name):
    lp, old, teacher, _, mask = random_tokens(1)
    lp.requires_grad_()
    tensors = dict(logprobs=lp, old_logprobs=old, teacher_logprobs=teacher, advantages=torch.zeros(4), mask=mask)
    loss, _ = LOSSES[name](tensors, {})
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(lp.grad) == 0


def test_identical_teacher_and_student_give_no_signal():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 3, dtype=torch.float64)
    for fn in (fkl_loss, lambda s, te, m: gkd_loss(s, te, m, beta=0.3)):
        loss, _ = fn(logits, logits.detach().clone(), mask)
        (grad,) = torch.autograd.grad(loss, logits)
        assert abs(loss.item()) < 1e-12 and grad.abs().max().item() < 1e-12
    lp = -torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    loss, _ = opd_loss(lp, lp.detach(), lp.detach().clone(), mask)
    (grad,) = torch.autograd.grad(loss, lp)
    assert loss.item() == 0.0 and grad.abs().max().item() == 0.0


def test_gradients_flow_only_into_the_student():
    lp, old, teacher, adv, mask = random_tokens(2)
    lp.requires_grad_(), old.requires_grad_(), teacher.requires_grad_()
    for name in ("grpo_kl", "rakd", "opd"):
        tensors = dict(logprobs=lp, old_logprobs=old, teacher_logprobs=teacher, advantages=adv, mask=mask)
        LOSSES[name](tensors, {})[0].backward()
    assert lp.grad.abs().sum() > 0 and old.grad is None and teacher.grad is None
    s_logits = torch.randn(4, 6, 7, requires_grad=True)
    te_logits = torch.randn(4, 6, 7, requires_grad=True)
    for name in ("fkl", "gkd"):
        LOSSES[name](dict(student_logits=s_logits, teacher_logits=te_logits, mask=mask.float()), {})[0].backward()
    assert s_logits.grad.abs().sum() > 0 and te_logits.grad is None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_empty_mask_gives_finite_loss(name):
    lp, old, teacher, adv, _ = random_tokens(3)
    empty = torch.zeros_like(lp)
    tensors = dict(
        logprobs=lp,
        old_logprobs=old,
        teacher_logprobs=teacher,
        advantages=adv,
        mask=empty,
        student_logits=torch.randn(4, 6, 5),
        teacher_logits=torch.randn(4, 6, 5),
    )
    loss, metrics = LOSSES[name](tensors, {})
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())


def test_registry_describes_inputs():
    from typing import get_args

    from rakd.train.config import Method

    assert list(LOSSES) == list(get_args(Method))  # the config's method names are the registry's, in its order
    # what each loss reads of the teacher and which rows it trains on: the trainer runs and charges its passes
    # from these (gkd and fkl read whole distributions and no sampled-token log-probs; opd and gkd no advantage)
    assert {m: (spec.teacher, spec.trains_on) for m, spec in LOSSES.items()} == {
        "sft": ("none", "all"),
        "seqkd_fresh": ("none", "verified"),
        "fkl": ("logits", "all"),
        "gkd": ("logits", "all"),
        "opd": ("logprobs", "all"),
        "grpo": ("none", "informative"),
        "grpo_kl": ("logprobs", "informative"),
        "rakd": ("logprobs", "informative"),
        "rakd_lower": ("logprobs", "informative"),
    }
    assert "student_logits" in LOSSES["gkd"].inputs and LOSSES["gkd"].on_policy and not LOSSES["fkl"].on_policy
    assert set(LOSSES["rakd"].hparams) == {"alpha", "eps_low", "eps_high", "teacher_clamp", "agg"}
    with pytest.raises(KeyError, match="needs tensors"):
        LOSSES["rakd"]({}, {})


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_loss_hyperparameter_is_a_config_field_with_the_loss_default(method):
    from rakd.train.config import LossParams

    spec, fields = LOSSES[method], LossParams.model_fields
    assert set(spec.hparams) <= set(fields), f"{method}: hyper-parameters missing from LossParams"
    resolved = spec.resolve(LossParams().model_dump())
    for name, default in spec.defaults.items():
        assert resolved[name] == default, f"{method}.{name}: LossParams gives {resolved[name]!r}, the loss {default!r}"


def test_aggregation_defaults_per_method_and_an_explicit_choice_wins():
    from rakd.train.config import LossParams

    own = {m: LOSSES[m].resolve(LossParams().model_dump()).get("agg") for m in LOSSES}
    assert own == {
        "sft": "token_mean",
        "seqkd_fresh": "token_mean",
        "opd": "token_mean",
        "rakd": "seq_mean",
        "rakd_lower": "seq_mean",
        "grpo": "seq_mean",
        "grpo_kl": "seq_mean",
        "fkl": None,
        "gkd": None,
    }
    assert LOSSES["opd"].resolve(LossParams(agg="seq_mean").model_dump())["agg"] == "seq_mean"
