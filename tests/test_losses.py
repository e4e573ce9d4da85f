"The training objective: each term against a hand computation, zero where the maths says zero, weights, NaN safety."
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from diffvqa.core import get_preset, DiffVQAError, LossConfig
from diffvqa.losses import (LOSS_TERMS, DiffVQALoss, gram_loss, gram_matrix, koleo_loss, lm_loss, mask_consistency_loss,
                            prediction_loss)
from diffvqa.registration import registration_loss

torch.set_num_threads(1)


def test_lm_loss_by_hand_ignores_padding():
    logits = torch.tensor([[[0., math.log(3)], [0., 0.], [50., -50.]]])
    ids = torch.tensor([[1, 0, 1]])
    expected = (-math.log(3 / 4) + math.log(2)) / 2
    assert lm_loss(logits, ids, torch.tensor([[1, 1, 0]])).item() == pytest.approx(expected, abs=1e-6)
    assert lm_loss(logits, torch.tensor([[1, 0, 9]]), pad_id=9).item() == pytest.approx(expected, abs=1e-6)
    assert lm_loss(logits, ids, torch.zeros(1, 3)).item() == 0.
    with pytest.raises(ValueError, match='pad_id'): lm_loss(logits, ids)
    with pytest.raises(ValueError, match='do not match'): lm_loss(logits, ids[:, :2], pad_id=0)


def test_lm_loss_is_token_mean_over_batch():
    g = torch.Generator().manual_seed(0)
    logits, ids = torch.randn(2, 4, 5, generator=g), torch.randint(0, 5, (2, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction='none').view(2, 4)
    assert lm_loss(logits, ids, mask).item() == pytest.approx((ce * mask).sum().item() / 4, abs=1e-6)


def test_mask_consistency_by_hand_and_detached_target():
    f = torch.tensor([[[1., 2.], [3., 4.]]], requires_grad=True)
    fm = torch.tensor([[[1., 2.], [1., 1.]]], requires_grad=True)
    m = torch.tensor([[1., .5]])
    loss = mask_consistency_loss(fm, f, m)
    assert loss.item() == pytest.approx(1.25 / 4)
    assert mask_consistency_loss(fm, f, m, reduction='sum').item() == pytest.approx(1.25)
    loss.backward()
    assert f.grad is None
    assert torch.allclose(fm.grad, torch.tensor([[[0., 0.], [-.25, -.5]]]))
    assert mask_consistency_loss(f, f, torch.ones(1, 2)).item() == 0.


def test_prediction_loss_by_hand():
    f = torch.tensor([[[1., 2.], [3., 4.]]])
    assert prediction_loss(torch.tensor([[[1., 2.], [3., 5.]]]), f).item() == pytest.approx(.25)
    assert prediction_loss(torch.tensor([[[1., 2.], [3., 5.]]]), f, reduction='sum').item() == pytest.approx(1.)
    assert prediction_loss(f, f).item() == 0.
    with pytest.raises(ValueError, match='reduction'): prediction_loss(f, f, reduction='max')


def test_gram_by_hand_and_zero_for_identical_visits():
    X, Y = torch.tensor([[[1., 0.], [1., 1.]]]), torch.eye(2)[None]
    assert torch.allclose(gram_matrix(X)[0], torch.tensor([[1., 2 ** -.5], [2 ** -.5, 1.]]) / 2)
    assert gram_loss(X, Y).item() == pytest.approx(.25, abs=1e-6)
    assert gram_loss(torch.cat([X, Y]), torch.cat([Y, Y])).item() == pytest.approx(.125, abs=1e-6)
    f = torch.randn(3, 9, 4)
    assert gram_loss(f, f).item() == 0.
    assert gram_loss(f, f * 7).item() == pytest.approx(0., abs=1e-10)
    g = torch.randn(3, 9, 4)
    exact = gram_loss(f, g).item()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert gram_loss(f, g).item() == pytest.approx(exact, abs=1e-7)  # float32 inside autocast


def test_koleo_by_hand_single_sample_and_coincident_samples():
    z = torch.tensor([[1., 0.], [0., 1.], [1., 1.]])
    assert koleo_loss(z).item() == pytest.approx(-math.log(math.sqrt(2 - math.sqrt(2))), abs=1e-6)
    assert koleo_loss(z[:1]).item() == 0.
    zc = torch.tensor([[1., 2.], [1., 2.], [2., 4.], [-1., 0.]], requires_grad=True)  # three coincide after normalising
    loss = koleo_loss(zc)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zc.grad).all()
    d4 = math.dist((-1., 0.), (1 / math.sqrt(5), 2 / math.sqrt(5)))  # the odd one out to its nearest neighbour
    assert loss.item() == pytest.approx((3 * -math.log(2e-8) - math.log(d4)) / 4, abs=0.05)  # coincident: -log(2 eps) each


def _fake(same: bool, requires_grad: bool = False, B: int = 3, N: int = 16, C: int = 8, L: int = 5, V: int = 11):
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(requires_grad)
    f_main = r(B, N, C)
    f_ref = f_main.detach().clone().requires_grad_(requires_grad) if same else r(B, N, C)
    eye = torch.tensor([[1., 0., 0.], [0., 1., 0.]]).repeat(B, 1, 1)
    return SimpleNamespace(
        logits=r(B, L, V), f_main=f_main, f_ref=f_ref, f_mask_main=f_main if same else r(B, N, C),
        f_mask_ref=f_ref if same else r(B, N, C), f_pred_main=f_main if same else r(B, N, C),
        f_pred_ref=f_ref if same else r(B, N, C), M=torch.ones(B, 1, 32, 32) if same else torch.rand(B, 1, 32, 32, generator=g),
        theta=eye if same else eye + 0.1, z=r(B, C))


IDS = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5], [6, 0, 0, 0, 0]])


def test_total_is_zero_where_maths_says_zero():
    out = _fake(same=True)
    crit = DiffVQALoss(pad_id=0)
    total = crit(out, IDS)
    t = crit.last_terms
    for k in ('reg', 'mask_main', 'mask_ref', 'pred_main', 'pred_ref', 'gram', 'gram_mask'): assert t[k] == 0., k
    assert total.item() == pytest.approx(lm_loss(out.logits, IDS, pad_id=0).item() + 1e-3 * koleo_loss(out.z).item(), abs=1e-6)
    assert set(t) == {*LOSS_TERMS, 'total'}


def test_total_is_weighted_sum_and_accepts_explicit_mask():
    out = _fake(same=False)
    cfg = LossConfig(alpha_mask=.3, alpha_pred=.2, alpha_gram=.7, alpha_koleo=.05, w_sml=1., w_det=.5, w_tran=.25)
    crit = DiffVQALoss(cfg, pad_id=0)
    total = crit(out, IDS)
    t, w = crit.last_terms, crit.weights
    assert all(t[k] > 0 for k in LOSS_TERMS if k not in ('koleo', 'changes'))
    assert math.isnan(t['changes'])   # the stand-in has no change scores: logged as NaN, not in the total
    assert total.item() == pytest.approx(sum(w[k] * t[k] for k in LOSS_TERMS if k != 'changes'), rel=1e-6)
    assert t['reg'] == pytest.approx(registration_loss(out.theta, 1., .5, .25).item(), rel=1e-6)
    assert t['total'] == pytest.approx(total.item())
    explicit = DiffVQALoss(cfg)(out, IDS, answer_mask=(IDS != 0).long())
    assert explicit.item() == pytest.approx(total.item(), rel=1e-6)


def test_zero_weight_has_no_effect_on_total_or_gradient():
    out = _fake(same=False, requires_grad=True)
    full = DiffVQALoss(pad_id=0)(out, IDS)
    crit = DiffVQALoss(LossConfig(alpha_gram=0.), pad_id=0)
    total = crit(out, IDS)
    assert crit.last_terms['gram'] > 0  # still logged
    assert total.item() == pytest.approx(full.item() - .1 * (crit.last_terms['gram'] + crit.last_terms['gram_mask']), rel=1e-6)
    total.backward()
    assert out.f_main.grad is None and out.f_ref.grad is None  # only the Gram term gave them gradient
    # a NaN in a zero-weighted term does not leak into the total
    out = _fake(same=False); out.f_main = torch.full_like(out.f_main, float('nan'))
    crit = DiffVQALoss(LossConfig(alpha_gram=0., alpha_mask=0., alpha_pred=0.), pad_id=0)
    assert math.isfinite(crit(out, IDS).item()) and math.isnan(crit.last_terms['gram'])


def test_missing_fields_are_skipped_and_similarity_needs_images():
    out = _fake(same=False); out.z = None; out.f_pred_ref = None
    crit = DiffVQALoss(pad_id=0)
    crit(out, IDS)
    assert math.isnan(crit.last_terms['koleo']) and math.isnan(crit.last_terms['pred_ref'])
    with pytest.raises(DiffVQAError, match='w_similarity'): DiffVQALoss(LossConfig(w_similarity=1.), pad_id=0)(out, IDS)


def test_on_the_tiny_model_output():
    from diffvqa.model import DiffVQA
    from diffvqa.tokenizer import train_bpe_tokenizer
    texts = ['what has changed compared to the reference image?', 'nothing has changed.', 'is there pneumothorax?', 'no'] * 8
    tok = train_bpe_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = DiffVQA.from_preset('tiny', tokenizer=tok).train()
    model.set_lambda(.5)
    q = tok(texts[:2], padding=True, return_tensors='pt')
    a = tok([texts[1] + tok.eos_token, 'no' + tok.eos_token], padding=True, return_tensors='pt')
    out = model(torch.rand(2, 1, 128, 128), torch.rand(2, 1, 128, 128), q['input_ids'], q['attention_mask'],
                a['input_ids'], a['attention_mask'])
    from diffvqa.templates import FINDINGS, change_targets
    changes = torch.stack([torch.tensor(change_targets(texts[1])).flatten(), torch.full((3 * len(FINDINGS),), float('nan'))])
    crit = DiffVQALoss(get_preset('tiny').loss, pad_id=tok.pad_token_id)
    total = crit(out, a['input_ids'], changes)
    assert all(math.isfinite(v) for v in crit.last_terms.values()), crit.last_terms
    total.backward()
    for name in ('mask', 'projector', 'decoder', 'pred_head'):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    assert all(p.grad is None for p in model.registration.parameters())   # tiny keeps the pretrained registration


def test_losses_module_imports_only_torch_side():
    code = ('import sys, diffvqa.losses; bad = [m for m in ("fastai", "pycocoevalcap", "pandas", "matplotlib", "diffdrr") '
            'if m in sys.modules]; print(bad); sys.exit(bool(bad))')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
