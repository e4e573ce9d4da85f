"Saliency-guided variant: keyword per answer form, keyword token spans in BPE ids, Grad-CAM by hand, shared mask, no parameter gradients, determinism, and the tiny DiffVQA path."
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from diffvqa.core import DiffVQAError
from diffvqa.saliency import (Keyword, KeywordExtractor, LexiconKeywordExtractor, grad_cam, keyword_logprob, keyword_saliency,
                              keyword_spans, keyword_target_mask, keyword_targets, shared_saliency_mask, unit_max)
from diffvqa.templates import (DIFFERENCE_QUESTION, FINDINGS, LevelChange, abnormality_question, difference_answer, level_question,
                               location_question, presence_question, type_question, view_question)
from diffvqa.tokenizer import train_bpe_tokenizer

torch.set_num_threads(1)
LEVEL = LevelChange('pleural effusion', 'moderate', 'small')
Q = lambda text: Keyword(text, 'question', 'question')

FORMS = {  # answer form: (answer, question, expected keyword)
    'difference, one added': (difference_answer(added=['pneumothorax']), DIFFERENCE_QUESTION, Keyword('pneumothorax', 'added')),
    'difference, several added': (difference_answer(added=['consolidation', 'pneumonia']), DIFFERENCE_QUESTION, Keyword('consolidation', 'added')),
    'difference, missing': (difference_answer(removed=['pleural effusion', 'pneumothorax', 'atelectasis']), DIFFERENCE_QUESTION,
                            Keyword('pleural effusion', 'removed')),
    'difference, level prefix + added + missing': (difference_answer(['edema'], ['atelectasis'], [LEVEL]), DIFFERENCE_QUESTION, Keyword('edema', 'added')),
    'difference, level prefix + missing': (difference_answer(removed=['atelectasis'], level_changes=[LEVEL]), DIFFERENCE_QUESTION,
                                           Keyword('atelectasis', 'removed')),
    'difference, level only': (difference_answer(level_changes=[LEVEL]), DIFFERENCE_QUESTION, Keyword('pleural effusion', 'level_change')),
    'difference, nothing changed': ('nothing has changed.', DIFFERENCE_QUESTION, None),
    'difference, one lung, nothing changed': ('nothing has changed.', 'what has changed in the right lung area?', None),
    'abnormality list': ('pleural effusion, atelectasis', abnormality_question(0), Keyword('pleural effusion', 'named')),
    'abnormality list, long name': ('enlargement of the cardiac silhouette, edema', abnormality_question(1),
                                    Keyword('enlargement of the cardiac silhouette', 'named')),
    'abnormality yes/no': ('yes', abnormality_question(2), None),
    'presence yes': ('yes', presence_question('pleural effusion'), Q('pleural effusion')),
    'presence no': ('no', presence_question('pneumothorax', form=1), Q('pneumothorax')),
    'presence in a location': ('yes', presence_question('lung opacity', form=2, location='left lower lobe'), Q('lung opacity')),
    'location': ('left apical area', location_question('pneumothorax'), Q('pneumothorax')),
    'location, side': ('left side', location_question('pleural effusion', form=2), Q('pleural effusion')),
    'location, lobe': ('the left lower lobe', location_question('atelectasis', form=1), Q('atelectasis')),
    'level': ('moderate', level_question('pleural effusion'), Q('pleural effusion')),
    'type': ('plate-like', type_question('atelectasis'), Q('atelectasis')),
    'view, which': ('PA view', view_question(0), None),
    'view, yes/no': ('yes', view_question(2), None),
}


@pytest.mark.parametrize('form', list(FORMS))
def test_keyword_of_every_answer_form(form):
    answer, question, want = FORMS[form]
    assert LexiconKeywordExtractor()(answer, question) == want


def test_extractor_longest_match_whole_words_and_options():
    ex = LexiconKeywordExtractor(['pleural', 'effusion', 'pleural effusion', 'enlargement', 'silhouette', 'enlargement of the cardiac silhouette'])
    assert ex.findings('Pleural   Effusion; enlargement of the cardiac silhouette') == ['pleural effusion', 'enlargement of the cardiac silhouette']
    assert ex('the main image is missing the finding of pleural effusion than the reference image. ') == Keyword('pleural effusion', 'removed')
    assert LexiconKeywordExtractor().findings('hydropneumothorax, pneumothorax-like') == []
    assert LexiconKeywordExtractor(use_question=False)('yes', presence_question('edema')) is None
    assert LexiconKeywordExtractor()('the main image has an additional finding of lung nodule than the reference image. ') is None  # outside the vocabulary
    with pytest.raises(DiffVQAError, match='vocabulary'): LexiconKeywordExtractor([])
    with pytest.raises(DiffVQAError, match='Keyword.text'): Keyword(' ', 'added')
    with pytest.raises(DiffVQAError, match='Keyword.source'): Keyword('edema', 'added', 'report')


@pytest.fixture(scope='module')
def tok():
    texts = [difference_answer(added=[f]).strip() for f in FINDINGS] + [difference_answer(removed=FINDINGS[i:i + 3]).strip() for i in range(0, 30, 3)]
    return train_bpe_tokenizer((texts + [presence_question(f) for f in FINDINGS] + ['yes', 'no', 'PA view']) * 3, vocab_size=400)


def test_keyword_spans_include_the_leading_space_token(tok):
    answer = difference_answer(added=['pleural effusion']).strip()
    ids = tok(answer, add_special_tokens=False)['input_ids'] + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    [(s, e)] = keyword_spans(tok, ids, 'pleural effusion')
    assert tok.convert_ids_to_tokens(ids[s]) == 'Ġpleural' and tok.convert_ids_to_tokens(ids[s - 1]) == 'Ġof'
    assert tok.decode(ids[s:e]) == ' pleural effusion' and tok.decode(ids[e]) == ' than'
    assert keyword_spans(tok, torch.tensor(ids), 'PLEURAL effusion') == [(s, e)]
    assert keyword_spans(tok, ids, 'effusion') == [(s + 1, e)]  # a later word of the name: no 'Ġpleural'
    assert keyword_spans(tok, ids, 'edema') == []
    with pytest.raises(DiffVQAError, match='keyword'): keyword_spans(tok, ids, '  ')


def test_keyword_spans_of_non_canonical_ids(tok):
    "Generated ids need not be the tokenizer's own split of their text: one id per character still maps back."
    text = 'pleural effusion, pneumothorax'
    ids = [tok.convert_tokens_to_ids('Ġ' if ch == ' ' else ch) for ch in text]
    assert keyword_spans(tok, ids, 'pneumothorax') == [(18, 30)]
    assert keyword_spans(tok, ids, 'pleural effusion') == [(0, 16)]


def _pad(tok, answers):
    enc = tok(answers, add_special_tokens=False)['input_ids']
    La = max(map(len, enc)) + 1
    return torch.tensor([r + [tok.eos_token_id] + [tok.pad_token_id] * (La - len(r) - 1) for r in enc]), enc


def test_keyword_targets_per_row(tok):
    answers = [difference_answer(added=['pneumothorax'], level_changes=[LEVEL]).strip(), 'left side', 'PA view', 'nothing has changed.']
    questions = [DIFFERENCE_QUESTION, location_question('edema', 2), view_question(0), DIFFERENCE_QUESTION]
    A, enc = _pad(tok, answers)
    kws, target = keyword_targets(tok, A, questions, answers)
    assert kws == [Keyword('pneumothorax', 'added'), Q('edema'), None, None]
    assert tok.decode(A[0][target[0]]) == ' pneumothorax'
    assert target[1].tolist() == [True] * len(enc[1]) + [False] * (A.shape[1] - len(enc[1]))  # all of 'left side', no eos
    assert not target[2:].any()
    kws2, target2 = keyword_targets(tok, A, questions)  # texts decoded from the ids
    assert kws2 == kws and torch.equal(target2, target)

    class Fixed:
        def __call__(self, answer, question=None): return Keyword('side', 'llm')
    assert isinstance(Fixed(), KeywordExtractor)
    kws3, target3 = keyword_targets(tok, A, questions, answers, extractor=Fixed())
    assert kws3 == [Keyword('side', 'llm')] * 4 and target3.sum(1).tolist() == [0, len(tok(' side')['input_ids']), 0, 0]
    with pytest.raises(DiffVQAError, match='keywords'): keyword_target_mask(tok, A, kws[:2])


def test_keyword_logprob_by_hand():
    logits = torch.tensor([[[0., math.log(3)], [5., 5.], [2., 0.]], [[1., 1.], [1., 1.], [1., 1.]]])
    ids = torch.tensor([[1, 0, 0], [0, 0, 0]])
    target = torch.tensor([[True, True, False], [False, False, False]])
    got = keyword_logprob(logits, ids, target)
    assert got[0].item() == pytest.approx(math.log(3 / 4) + math.log(1 / 2), abs=1e-6) and got[1].item() == 0.
    with pytest.raises(DiffVQAError, match='do not match'): keyword_logprob(logits, ids, target[:, :2])


def test_grad_cam_linear_objective_by_hand():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    a = torch.randn(5, generator=g)
    raw = (f.detach() @ a).clamp_min(0).view(3, 1, 2, 2)
    cam = grad_cam(f, (f * a).sum(), (2, 2))
    expected = torch.where(raw.amax((-2, -1), keepdim=True) > 0, raw / raw.amax((-2, -1), keepdim=True), torch.zeros_like(raw))
    torch.testing.assert_close(cam, expected)
    torch.testing.assert_close(grad_cam(f, (f * a).sum(), (2, 2), normalize=False), raw)
    assert f.grad is None and not cam.requires_grad
    # a weighted objective: the channel weights are the spatial mean of the gradient, not its value at one place
    wts = torch.tensor([1., 0., 0., 3.]).view(1, 4, 1)
    raw2 = (f.detach() @ (a * wts.mean())).clamp_min(0).view(3, 1, 2, 2)
    torch.testing.assert_close(grad_cam(f, (f * a * wts).sum(), (2, 2), normalize=False), raw2)
    assert torch.equal(unit_max(torch.zeros(2, 1, 3, 3)), torch.zeros(2, 1, 3, 3))
    assert torch.equal(unit_max(torch.tensor([[[[0., 2.], [-1., 1.]]]])), torch.tensor([[[[0., 1.], [0., .5]]]]))


def test_grad_cam_errors():
    f = torch.randn(2, 4, 3, requires_grad=True)
    with torch.no_grad(): y = f.sum()
    with pytest.raises(DiffVQAError, match='no autograd graph'): grad_cam(f, y, (2, 2))
    with pytest.raises(DiffVQAError, match='scalar'): grad_cam(f, f.sum(-1), (2, 2))
    with pytest.raises(DiffVQAError, match='grid'): grad_cam(f, f.sum(), (3, 2))
    with pytest.raises(DiffVQAError, match='does not depend'): grad_cam(f, torch.ones(1, requires_grad=True).sum(), (2, 2))


def test_shared_mask_is_union_resized_and_scaled():
    cm = torch.zeros(3, 1, 2, 2); cr = torch.zeros(3, 1, 2, 2)
    cm[0, 0, 0, 0] = 1.; cr[0, 0, 1, 1] = .25        # row 0: evidence at both visits
    cr[1, 0, 0, 1] = .5                               # row 1: only the reference
    M = shared_saliency_mask(cm, cr, 8)
    assert M.shape == (3, 1, 8, 8) and M.min() >= 0 and not M.requires_grad
    assert M[0, 0, 0, 0] == 1. and M[0, 0, 7, 7].item() == pytest.approx(.25)
    assert M[1].amax() == 1. and M[1, 0, 0, 7] == 1.  # the reference's own map, scaled to peak 1
    assert torch.equal(M[2], torch.ones(1, 8, 8))     # no evidence anywhere: keep the whole image
    up = torch.nn.functional.interpolate(torch.maximum(cm, cr)[:1], size=(8, 8), mode='bilinear', align_corners=False)
    torch.testing.assert_close(M[:1], up / up.amax())
    assert torch.equal(shared_saliency_mask(cm, cr, 8), shared_saliency_mask(cr, cm, 8))
    assert shared_saliency_mask(cm, cr, (4, 6)).shape == (3, 1, 4, 6)
    with pytest.raises(DiffVQAError, match='cam_ref'): shared_saliency_mask(cm, cr[:, :, :1], 8)


class _Toy(nn.Module):
    "Tokens [B,N,C] → a two-word answer read from both visits' tokens."
    def __init__(self, C=6, V=5):
        super().__init__()
        self.mix = nn.Sequential(nn.Linear(C, 16), nn.GELU(), nn.Linear(16, C), nn.Dropout(0.5))
        self.out = nn.Linear(C, V)

    def forward(self, fm, fr):
        pooled = torch.cat([self.mix(fm), self.mix(fr)], dim=1).amax(1)
        return torch.stack([self.out(pooled), self.out(pooled.flip(-1))], dim=1)  # [B,2,V]


def _toy_inputs(seed=0, B=3, N=16, C=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, C, generator=g), torch.randn(B, N, C, generator=g), torch.tensor([[1, 2], [3, 0], [4, 4]])


def test_keyword_saliency_under_no_grad_touches_no_parameter():
    torch.manual_seed(0)
    toy = _Toy().eval()
    fm, fr, ids = _toy_inputs()
    target = torch.tensor([[True, False], [True, True], [False, False]])
    with torch.no_grad(): s = keyword_saliency(fm, fr, (4, 4), toy, ids, target, 12)
    assert all(p.grad is None for p in toy.parameters())
    for t in (s.mask, s.cam_main, s.cam_ref, s.logprob): assert not t.requires_grad and t.grad_fn is None
    assert s.mask.shape == (3, 1, 12, 12) and s.cam_main.shape == (3, 1, 4, 4)
    assert s.has_target.tolist() == [True, True, False]
    assert torch.equal(s.mask[2], torch.ones(1, 12, 12)) and not s.cam_main[2].any() and not s.cam_ref[2].any()
    assert s.mask[:2].amax((-2, -1)).flatten().tolist() == [1., 1.]
    torch.testing.assert_close(s.logprob, keyword_logprob(toy(fm, fr), ids, target))
    # the same maps as Grad-CAM taken directly on a graph that has the tokens as inputs
    fm2, fr2 = fm.clone().requires_grad_(), fr.clone().requires_grad_()
    obj = keyword_logprob(toy(fm2, fr2), ids, target).sum()
    torch.testing.assert_close(s.cam_main, grad_cam(fm2, obj, (4, 4), retain_graph=True))
    torch.testing.assert_close(s.cam_ref, grad_cam(fr2, obj, (4, 4)))
    with pytest.raises(DiffVQAError, match='neither'): keyword_saliency(fm, fr, (4, 4), lambda a, b: toy(fm, fr).detach().requires_grad_(), ids, target, 12)
    with pytest.raises(DiffVQAError, match='f_ref'): keyword_saliency(fm, fr[:, :8], (4, 4), toy, ids, target, 12)


def test_keyword_saliency_is_bit_identical_when_repeated():
    torch.manual_seed(0)
    toy = _Toy().eval()
    fm, fr, ids = _toy_inputs(1)
    target = torch.ones(3, 2, dtype=torch.bool)
    run = lambda per: keyword_saliency(fm, fr, (4, 4), toy, ids, target, 16, per_image=per)
    for per in (True, False):
        a, b = run(per), run(per)
        for k in ('mask', 'cam_main', 'cam_ref', 'logprob'): assert torch.equal(getattr(a, k), getattr(b, k)), (per, k)
    assert not torch.equal(run(True).mask, run(False).mask)  # the switch does change the mask


def test_grad_cam_peaks_in_the_region_the_answer_reads():
    """A hand-made model: channel 0 carries brightness inside the upper-left quadrant only, channel 1 outside it, and the
    answer 'effusion' is scored from channel 0. A bright disc in the quadrant, a brighter distractor outside it: the
    map and the shared mask peak at the disc, never at the distractor."""
    S, P = 32, 4                                               # 32 px films, 4 px cells: an 8 x 8 token grid
    inside = torch.zeros(8, 8); inside[:4, :4] = 1             # the upper-left quadrant of the grid
    def tokens(x):                                             # [B,1,S,S] -> [B,64,2]
        b = torch.nn.functional.avg_pool2d(x, P).flatten(1)    # brightness per cell
        return torch.stack([b * inside.flatten(), b * (1 - inside.flatten())], -1)
    def answer_logits(fm, fr):                                 # [B,1,2]: word 0 'effusion' reads channel 0 of both visits
        e = 10 * (fm[..., 0].mean(1) + fr[..., 0].mean(1))
        return torch.stack([e, torch.zeros_like(e)], -1)[:, None]
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing='ij')
    g = torch.Generator().manual_seed(0)
    for cy, cx in [(5, 6), (10, 3), (12, 12), (3, 13)]:
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 9).float()
        distractor = (((yy - 24) ** 2 + (xx - 24) ** 2) <= 16).float()
        main = (0.1 * torch.rand(1, 1, S, S, generator=g) + 0.6 * disc + 0.9 * distractor).clamp(0, 1)
        small = (((yy - cy) ** 2 + (xx - cx) ** 2) <= 4).float()   # the finding was smaller at the reference visit
        ref = (0.1 * torch.rand(1, 1, S, S, generator=g) + 0.6 * small + 0.9 * distractor).clamp(0, 1)
        with torch.no_grad():
            sal = keyword_saliency(tokens(main), tokens(ref), (8, 8), answer_logits, torch.zeros(1, 1, dtype=torch.long),
                                   torch.ones(1, 1, dtype=torch.bool), S)
        r, c = divmod(int(sal.cam_main[0, 0].argmax()), 8)
        assert (r, c) == (cy // P, cx // P)                    # the cell holding the disc centre
        assert sal.cam_main[0, 0][inside == 0].max() == 0      # nothing outside the region the answer reads
        assert divmod(int(sal.cam_ref[0, 0].argmax()), 8) == (cy // P, cx // P)
        r, c = divmod(int(sal.mask[0, 0].argmax()), S)
        assert abs(r - cy) <= P and abs(c - cx) <= P and sal.mask[0, 0, 24, 24] < 0.05


def _saliency_model(tok, seed=0):
    from diffvqa.core import saliency_variant
    from diffvqa.model import DiffVQA
    from diffvqa.testing import small_config
    torch.manual_seed(seed)
    return DiffVQA(saliency_variant(small_config()).model, tok).eval()


def _pair_batch(tok, S, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    main, ref = torch.rand(B, 1, S, S, generator=g), torch.rand(B, 1, S, S, generator=g)
    questions = [DIFFERENCE_QUESTION, presence_question('edema'), view_question(0)][:B]
    q = tok(questions, add_special_tokens=False, padding=True, return_tensors='pt')
    return main, ref, q['input_ids'], q['attention_mask']


def test_saliency_model_has_no_prior_and_its_step_matches_the_forward_pass(tok):
    "M ≡ 1 when no mask is given; the logits Grad-CAM differentiates are forward's; masks per question, eval mode, no .grad."
    from diffvqa.saliency import model_saliency
    model = _saliency_model(tok)
    S = model.config.image_size
    assert model.prior is None and model.config.mask_source == 'saliency'
    main, ref, q_ids, q_mask = _pair_batch(tok, S)
    A, _ = _pad(tok, [difference_answer(added=['pneumothorax']).strip(), 'yes', 'PA view'])
    a_mask = (A != tok.pad_token_id).long()
    with torch.no_grad():
        out = model(main, ref, q_ids, q_mask, A, a_mask)
        parts = model.encode_images(main, ref, torch.ones(3, dtype=torch.bool))
        logits = model.answer_logits(model.prefix(parts, q_ids, q_mask, torch.arange(3)), A, a_mask)
    assert out.U is None and out.F is None and torch.equal(out.M, torch.ones_like(main))
    torch.testing.assert_close(logits, out.logits)
    model.train()
    sal, kws = model_saliency(model, main, ref, q_ids, q_mask, A, pair_ids=torch.tensor([0, 0, 1]))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert kws == [Keyword('pneumothorax', 'added'), Keyword('edema', 'question', 'question'), None]
    assert sal.has_target.tolist() == [True, True, False] and torch.equal(sal.mask[2], torch.ones(1, S, S))
    assert sal.mask[0].amax() == 1 and sal.mask[0].amin() < 1
    # the mask goes in: a masked forward differs from the unmasked one where M is not all ones
    with torch.no_grad(): masked = model.eval()(main, ref, q_ids, q_mask, A, a_mask, mask=sal.mask)
    assert torch.equal(masked.M, sal.mask) and not torch.allclose(masked.logits[0], out.logits[0])
    torch.testing.assert_close(masked.logits[2], out.logits[2])
    with pytest.raises(DiffVQAError, match='mask'): model(main, ref, q_ids, q_mask, A, a_mask, mask=sal.mask[:, :, :8])


def test_two_pass_inference_is_deterministic(tok):
    from diffvqa.saliency import SaliencyGeneration, answer_questions, model_saliency, two_pass_generate
    model = _saliency_model(tok, seed=1)
    main, ref, q_ids, q_mask = _pair_batch(tok, model.config.image_size, seed=1)
    with torch.no_grad():
        runs = [answer_questions(model, main, ref, q_ids, q_mask, max_new_tokens=6) for _ in range(2)]
        a, b = runs
        assert isinstance(a, SaliencyGeneration)
        assert a.texts == b.texts and a.preliminary == b.preliminary and a.keywords == b.keywords
        for k in ('ids', 'M', 'cam_main', 'cam_ref', 'theta', 'scores'): assert torch.equal(getattr(a, k), getattr(b, k)), k
        # the final pass ran through the Grad-CAM mask of the preliminary answer
        first = model.generate(main, ref, q_ids, q_mask, max_new_tokens=6)
        sal, _ = model_saliency(model, main, ref, q_ids, q_mask, first.ids, answers=first.texts)
        assert first.texts == a.preliminary and torch.equal(sal.mask, a.M)
        again = two_pass_generate(model, main, ref, q_ids, q_mask, max_new_tokens=6, extractor=lambda ans, q=None: Keyword('edema', 'llm', 'question'))
    assert all(k == Keyword('edema', 'llm', 'question') for k in again.keywords)  # a pluggable extractor
    assert all(p.grad is None for p in model.parameters())


def test_attention_model_answers_in_one_pass(tok):
    from diffvqa.model import DiffVQA, GenerationOutput
    from diffvqa.saliency import SaliencyGeneration, answer_questions, model_saliency
    from diffvqa.testing import small_config
    torch.manual_seed(0)
    model = DiffVQA(small_config().model, tok).eval()
    main, ref, q_ids, q_mask = _pair_batch(tok, model.config.image_size, B=1)
    with torch.no_grad(): g = answer_questions(model, main, ref, q_ids, q_mask, max_new_tokens=3)
    assert type(g) is GenerationOutput and not isinstance(g, SaliencyGeneration) and g.U is not None
    with pytest.raises(DiffVQAError, match="mask_source='saliency'"): model_saliency(model, main, ref, q_ids, q_mask, g.ids)
    with pytest.raises(DiffVQAError, match='mask'): model.generate(main, ref, q_ids, q_mask, mask=torch.ones_like(main))


def test_train_and_predict_a_saliency_run(tmp_path):
    "A few steps of the saliency loop on the fake release write a run; predict on it writes the Grad-CAM mask overlay."
    import json
    from diffvqa.core import get_preset, saliency_variant
    from diffvqa.data import prepare
    from diffvqa.predict import predict
    from diffvqa.testing import fast_caption_scores, make_fake_mimic, small_config
    from fastai.callback.core import Callback
    from diffvqa.train import train
    fm = make_fake_mimic(tmp_path/'tree', n_subjects=10, traps=False, seed=0)
    cache = prepare(fm.root, tmp_path/'cache', size=64, progress=False)
    assert get_preset('saliency-tiny').model.mask_source == 'saliency' and get_preset('saliency').model.image_encoder == 'resnet50'
    seen = []
    class Spy(Callback):   # records how many inputs the model is given
        order = 50
        def before_batch(self): seen.append(len(self.learn.xb))
    res = train(cache, tmp_path/'run', config=saliency_variant(small_config()), max_train_questions=8, cbs=[Spy()],
                scorer=fast_caption_scores, progress=False, verbose=False)
    assert res.epochs_done == 2 and res.best_dir is not None and set(seen) == {9}   # 8 inputs + the saliency mask
    assert json.loads((tmp_path/'run'/'config.json').read_text())['model']['mask_source'] == 'saliency'
    films = sorted(Path(fm.root).rglob('*.jpg'))
    pred = predict(tmp_path/'run', films[1], films[0], DIFFERENCE_QUESTION, out=tmp_path/'pred')
    written = json.loads((tmp_path/'pred'/'answer.json').read_text())
    assert (tmp_path/'pred'/'overlay.png').stat().st_size > 0 and pred.U is None and pred.lam is None
    assert set(written['masks']) == {'M'} and set(written['saliency']) == {'preliminary', 'keyword', 'mask_from_grad_cam'}
    assert written['answer'] == pred.answer


def test_saliency_preset_shapes_on_meta_device():
    "ResNet-50 (7 x 7 x 2048 at 224 px) + GPT-2 small, no prior; published weights load from local files only, or one line."
    from diffvqa.model import DiffVQA, placeholder_tokenizer
    with torch.device('meta'):
        m = DiffVQA.from_preset('saliency', tokenizer=placeholder_tokenizer(), pretrained=False)
    assert m.prior is None and m.grid == (7, 7) and m.image_encoder.dim == 2048 and m.config.image_size == 224
    assert m.decoder.config.n_embd == 768 and m.decoder.config.n_layer == 12 and m.teacher is None
    with pytest.raises(DiffVQAError) as e: DiffVQA.from_preset('saliency', tokenizer=placeholder_tokenizer(), pretrained=True)
    assert '\n' not in str(e.value) and 'resnet50' in str(e.value) and 'gpt2' in str(e.value) and 'rad-dino' not in str(e.value)
