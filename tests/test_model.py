"""The model of issue 5 (registration, DINO prior, adaptive mask, DiffVQA) on the tiny preset, CPU only."""
import json
import os
import struct

import pytest
import torch
import torch.nn.functional as F

from diffvqa.core import DiffVQAError, ModelConfig, get_preset
from diffvqa.mask import AdaptiveMask
from diffvqa.model import DiffVQA, ImageEncoder, count_parameters, placeholder_tokenizer
from diffvqa.prior import DinoPrior, cls_patch_attention
from diffvqa.registration import IDENTITY_THETA, AffineRegistration, registration_loss, similarity_loss, warp_affine
from diffvqa.tokenizer import train_bpe_tokenizer

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
torch.set_num_threads(2)
slow = pytest.mark.skipif(os.environ.get('DIFFVQA_SLOW') != '1', reason='slow: set DIFFVQA_SLOW=1')

TEXTS = ['what has changed compared to the reference image?', 'nothing has changed.', 'is there pneumothorax?',
         'the main image has an additional finding of pleural effusion than the reference image.', 'yes.', 'no.'] * 10


@pytest.fixture(scope='module')
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope='module')
def model(tok):
    torch.manual_seed(0)
    m = DiffVQA.from_preset('tiny', tokenizer=tok).eval()
    torch.nn.init.normal_(m.copy_gate.weight, std=0.5)  # the change pointer's gate depends on the decoder state (it starts constant)
    return m


def make_batch(tok, questions, answers, S=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = tok(questions, padding=True, return_tensors='pt')
    a = tok([x + tok.eos_token for x in answers], padding=True, return_tensors='pt')
    return (torch.rand(len(questions), 1, S, S, generator=g), torch.rand(len(questions), 1, S, S, generator=g),
            q['input_ids'], q['attention_mask'], a['input_ids'], a['attention_mask'])


@pytest.fixture(scope='module')
def batch(tok):
    return make_batch(tok, ['what has changed compared to the reference image?', 'is there pneumothorax?'],
                      ['nothing has changed.', 'no.'])


# ---------------------------------------------------------------- registration
def test_registration_identity_at_init():
    torch.manual_seed(0)
    reg = AffineRegistration(channels=8)
    main, ref = torch.rand(2, 1, 48, 48), torch.rand(2, 1, 48, 48)
    out = reg(main, ref)
    assert torch.equal(out.theta.detach(), torch.tensor(IDENTITY_THETA).view(1, 2, 3).expand(2, 2, 3))
    torch.testing.assert_close(out.registered.detach(), main, atol=1e-5, rtol=0)
    assert registration_loss(out.theta).item() == 0.0


def test_registration_gradients_reach_cnn():
    torch.manual_seed(0)
    reg = AffineRegistration(channels=8)
    with torch.no_grad(): reg.head.weight.normal_(0, 1e-3)
    main = torch.rand(2, 1, 48, 48)
    ref = torch.roll(main, 2, dims=-1)
    similarity_loss(reg(main, ref).registered, ref).backward()
    for p in reg.parameters(): assert p.grad is not None and p.grad.abs().sum() > 0


def test_warp_shift_moves_content():
    img = torch.zeros(1, 1, 32, 32); img[..., 10:14, 10:14] = 1
    moved = warp_affine(img, torch.tensor([[[1.0, 0.0, 2 * 2 / 32], [0.0, 1.0, 0.0]]]))
    torch.testing.assert_close(moved[..., 10:14, 8:12], img[..., 10:14, 10:14], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- prior
def test_cls_patch_attention_by_hand():
    A = cls_patch_attention(torch.tensor([[1.0, 0.0]]), torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]]]), (2, 2))
    torch.testing.assert_close(A[0, 0], torch.tensor([[1.0, 0.5], [0.0, (2 ** -0.5 + 1) / 2]]))


def test_prior_is_frozen_and_union():
    torch.manual_seed(0)
    prior = DinoPrior.from_config(get_preset('tiny').model, pretrained=False)
    prior.train()
    assert not prior.training and not prior.backbone.training
    main = torch.rand(2, 1, 64, 64, requires_grad=True)
    out = prior(main, torch.rand(2, 1, 64, 64))
    assert not out.U.requires_grad and out.U.grad_fn is None
    assert torch.equal(out.U, torch.maximum(out.A_main, out.A_ref))
    assert 0 <= out.U.min() and out.U.max() <= 1


def test_prior_missing_weights_is_one_line():
    with pytest.raises(DiffVQAError, match='not found locally') as e:
        DinoPrior.from_config(ModelConfig(prior='/nonexistent/rad-dino'), pretrained=True)
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------- mask
def test_mask_lambda_extremes():
    torch.manual_seed(0)
    m = AdaptiveMask(16, hidden=8).requires_grad_(False)
    f1, f2, U = torch.randn(2, 9, 16), torch.randn(2, 9, 16), torch.rand(2, 1, 24, 24)
    assert torch.equal(m(f1, f2, U, (3, 3)).M, U)
    m.set_lambda(0.0)
    o = m(f1, f2, U, (3, 3))
    assert torch.equal(o.M, o.F)
    m.set_lambda(0.25)
    o = m(f1, f2, U, (3, 3))
    torch.testing.assert_close(o.M, 0.25 * U + 0.75 * o.F)
    assert o.M.shape == (2, 1, 24, 24) and 0 <= o.M.min() and o.M.max() <= 1


# ---------------------------------------------------------------- image encoder
@pytest.mark.parametrize('name,kw,grid,dim', [
    ('resnet18', {}, (2, 2), 512),
    ('vit_tiny_patch16_224', dict(img_size=64), (4, 4), 192),
])
def test_any_timm_backbone_gives_tokens(name, kw, grid, dim):
    enc = ImageEncoder(name, **kw).eval()
    with torch.no_grad(): tokens, g = enc(torch.rand(2, 1, 64, 64))
    assert g == grid and tokens.shape == (2, grid[0] * grid[1], dim)


# ---------------------------------------------------------------- DiffVQA
def test_forward_shapes(model, batch, tok):
    main, ref, qi, qm, ai, am = batch
    with torch.no_grad(): out = model(main, ref, qi, qm, ai, am)
    N, C = model.grid[0] * model.grid[1], model.image_encoder.dim
    assert out.logits.shape == (2, ai.shape[1], len(tok))
    for k in ('f_main', 'f_ref', 'f_mask_main', 'f_mask_ref', 'f_pred_main', 'f_pred_ref'):
        assert getattr(out, k).shape == (2, N, C), k
    for k in ('registered', 'U', 'A_main', 'A_ref', 'F', 'M'):
        assert getattr(out, k).shape == (2, 1, 128, 128), k
    assert out.theta.shape == (2, 2, 3) and out.z.shape == (2, 2 * C) and out.M_tokens.shape == (2, N)
    assert out.m_main.shape == (2, N, model.config.mask_channels) and out.grid == (8, 8)
    torch.testing.assert_close(out.registered, main, atol=1e-5, rtol=0)


def test_one_mask_for_both_visits(model, batch):
    main, ref, qi, qm, ai, am = batch
    model.set_lambda(0.5)
    try:
        with torch.no_grad():
            out = model(main, ref, qi, qm, ai, am)
            fm, _ = model.image_encoder(torch.cat([out.M * out.registered, out.M * ref]))
    finally:
        model.set_lambda(1.0)
    assert out.M.shape[1] == 1
    torch.testing.assert_close(fm, torch.cat([out.f_mask_main, out.f_mask_ref]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.M, 0.5 * out.U + 0.5 * out.F)


def test_question_padding_is_invisible(model, batch):
    main, ref, qi, qm, ai, am = batch
    lq, la = int(qm[1].sum()), int(am[1].sum())
    assert lq < qi.shape[1]  # the second question really is padded
    with torch.no_grad():
        both = model(main, ref, qi, qm, ai, am)
        solo = model(main[1:], ref[1:], qi[1:, :lq], qm[1:, :lq], ai[1:, :la], am[1:, :la])
    torch.testing.assert_close(solo.logits[0], both.logits[1, :la], atol=1e-4, rtol=1e-4)


def test_greedy_deterministic_and_consistent_with_forward(model, batch):
    main, ref, qi, qm, ai, am = batch
    g1 = model.generate(main, ref, qi, qm, max_new_tokens=10)
    g2 = model.generate(main, ref, qi, qm, max_new_tokens=10)
    assert torch.equal(g1.ids, g2.ids) and g1.texts == g2.texts and len(g1.texts) == 2
    with torch.no_grad():
        out = model(main, ref, qi, qm, ai, am)
        tf = model(main, ref, qi, qm, g1.ids, torch.ones_like(g1.ids))
    assert torch.equal(g1.ids[:, 0], out.logits[:, 0].argmax(-1))
    keep = g1.ids != model.pad_id
    assert torch.equal(tf.logits.argmax(-1)[keep], g1.ids[keep])
    assert g1.M.shape == (2, 1, 128, 128) and g1.U.shape == g1.F.shape == g1.M.shape


def test_beam_one_equals_greedy_and_beams_are_batch_independent(model, batch):
    main, ref, qi, qm, _, _ = batch
    g = model.generate(main, ref, qi, qm, max_new_tokens=10)
    with torch.no_grad(): b1, _ = model._beam_search(model.encode(main, ref, qi, qm), 10, beams=1)
    assert torch.equal(b1, g.ids)
    b3 = model.generate(main, ref, qi, qm, max_new_tokens=10, num_beams=3)
    lq = int(qm[0].sum())
    b3_0 = model.generate(main[:1], ref[:1], qi[:1, :lq], qm[:1, :lq], max_new_tokens=10, num_beams=3)
    assert torch.equal(b3.ids[0, :b3_0.ids.shape[1]], b3_0.ids[0])
    assert b3.texts[0] == b3_0.texts[0]


def test_generate_restores_training_mode(model, batch):
    main, ref, qi, qm, _, _ = batch
    model.train()
    try:
        model.generate(main, ref, qi, qm, max_new_tokens=2)
        assert model.training and not model.prior.training
    finally:
        model.eval()


def test_gradients_everywhere_but_prior(tok, batch):
    torch.manual_seed(1)
    cfg = get_preset('tiny').model
    assert not cfg.registration_trainable and not any(p.requires_grad for p in DiffVQA.from_preset(cfg, tokenizer=tok).registration.parameters())
    cfg.registration_trainable = True   # the paper's setting: Θ learns from the answer too
    m = DiffVQA.from_preset(cfg, tokenizer=tok).train()
    m.set_lambda(0.5)
    main, ref, qi, qm, ai, am = batch
    out = m(main, ref, qi, qm, ai, am)
    loss = F.cross_entropy(out.logits.flatten(0, 1), ai.flatten()) + (out.f_pred_main - out.f_main).pow(2).mean()
    loss.backward()
    for name in ('registration', 'image_encoder', 'mask', 'projector', 'text_encoder', 'decoder', 'pred_head', 'copy_gate'):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(m, name).parameters()), name
    assert all(p.grad is None and not p.requires_grad for p in m.prior.parameters())
    assert not out.U.requires_grad
    m.freeze_image_encoder(True)
    assert count_parameters(m)['image_encoder'][1] == 0 and count_parameters(m)['decoder'][1] > 0
    m.freeze_image_encoder(False)
    assert count_parameters(m)['image_encoder'][1] == count_parameters(m)['image_encoder'][0]


def test_save_load_round_trip_is_bit_identical(model, batch, tmp_path):
    main, ref, qi, qm, ai, am = batch
    model.set_lambda(0.6)
    try:
        model.save_pretrained(tmp_path)
        m2 = DiffVQA.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            a, b = model(main, ref, qi, qm, ai, am), m2(main, ref, qi, qm, ai, am)
        for k in ('logits', 'M', 'U', 'F', 'f_mask_main', 'z'):
            assert torch.equal(getattr(a, k), getattr(b, k)), k
        assert torch.equal(model.generate(main, ref, qi, qm, max_new_tokens=6).ids, m2.generate(main, ref, qi, qm, max_new_tokens=6).ids)
    finally:
        model.set_lambda(1.0)
    assert {'config.json', 'model.safetensors', 'tokenizer.json'} <= {p.name for p in tmp_path.iterdir()}
    header = (tmp_path / 'model.safetensors').read_bytes()
    keys = json.loads(header[8:8 + struct.unpack('<Q', header[:8])[0]])
    assert 'decoder.lm_head.weight' not in keys and 'decoder.transformer.wte.weight' in keys  # tied weight stored once
    assert m2.decoder.lm_head.weight.data_ptr() == m2.decoder.transformer.wte.weight.data_ptr()
    assert json.loads((tmp_path / 'config.json').read_text())['image_size'] == 128


def test_bad_inputs_are_one_line_errors(model, batch, tmp_path):
    main, ref, qi, qm, ai, am = batch
    with pytest.raises(DiffVQAError, match='main: expected images of shape'):
        model(main[..., :64, :64], ref, qi, qm, ai, am)
    with pytest.raises(DiffVQAError, match='max_question_len'):
        long = qi.repeat(1, 10)
        model(main, ref, long, torch.ones_like(long), ai, am)
    with pytest.raises(DiffVQAError, match='tokenizer'):
        DiffVQA.from_preset('tiny')
    with pytest.raises(DiffVQAError, match='no config.json'):
        DiffVQA.from_pretrained(tmp_path / 'nothing')


def test_pretrained_missing_backbones_fail_in_one_line(tok):
    with pytest.raises(DiffVQAError) as e:
        DiffVQA.from_preset('paper', tokenizer=tok, pretrained=True)
    msg = str(e.value)
    assert '\n' not in msg and 'not found locally' in msg
    assert 'rad-dino' in msg and 'swin_base_patch4_window12_384' in msg and 'gpt2' in msg


def test_paper_shapes_on_meta_device():
    with torch.device('meta'):
        paper = DiffVQA.from_preset('paper', tokenizer=placeholder_tokenizer(), pretrained=False)
    assert paper.grid == (12, 12) and paper.image_encoder.dim == 1024 and paper.decoder.config.n_embd == 768
    assert paper.decoder.config.vocab_size == 50257 + 4
    assert paper.prior.backbone.config.hidden_size == 768 and paper.prior.image_size == 518
    assert len(paper.text_encoder.encoder.layers) == 6 and paper.text_encoder.encoder.layers[0].self_attn.num_heads == 12
    assert paper.projector.transformer.self_attn.num_heads == 8


@pytest.mark.slow
@slow
def test_paper_preset_forward_on_cpu():
    torch.manual_seed(0)
    tok = placeholder_tokenizer()
    m = DiffVQA.from_preset('paper', tokenizer=tok, pretrained=False).eval()
    q = torch.tensor([[5, 6, 7]]); a = torch.tensor([[8, tok.eos_token_id]])
    with torch.no_grad():
        out = m(torch.rand(1, 1, 384, 384), torch.rand(1, 1, 384, 384), q, torch.ones_like(q), a, torch.ones_like(a))
    assert out.f_main.shape == (1, 144, 1024) and out.logits.shape == (1, 2, len(tok)) and out.U.shape == (1, 1, 384, 384)


# ---------------------------------------------------------------- ablation switches (issue 4/5's variants)
def _variant(tok, **model_fields):
    cfg = get_preset('tiny').model
    for k, v in model_fields.items(): setattr(cfg, k, v)
    torch.manual_seed(0)
    return DiffVQA(cfg, tok).eval()


def test_ablation_switches(tok, batch):
    main, ref, q, qm, a, am = batch
    with torch.no_grad():
        # make the registration CNN predict a real warp, so that switching it off is visible
        fixed = _variant(tok, registration=False); torch.nn.init.normal_(fixed.registration.head.bias, std=1.0)
        out = fixed(main, ref, q, qm, a, am)
        assert torch.equal(out.theta, torch.eye(2, 3).expand(2, 2, 3)) and torch.equal(out.registered, main)
        learned = _variant(tok); torch.nn.init.normal_(learned.registration.head.bias, std=1.0)
        assert not torch.allclose(learned(main, ref, q, qm, a, am).theta, out.theta)
        no_mask = _variant(tok, mask_source='none')(main, ref, q, qm, a, am)
        assert torch.equal(no_mask.M, torch.ones_like(no_mask.M)) and not torch.equal(no_mask.F, torch.ones_like(no_mask.F))
        blank = _variant(tok, blank_films=True)
        o1 = blank(main, ref, q, qm, a, am)
        o2 = blank(torch.rand_like(main), torch.rand_like(ref), q, qm, a, am)
        assert torch.equal(o1.logits, o2.logits)  # the films cannot reach the answer
    with pytest.raises(DiffVQAError, match='mask_source'): _variant(tok, mask_source='gradcam')
