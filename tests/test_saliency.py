"Saliency-guided variant: keyword per answer form, keyword token spans in BPE ids, Grad-CAM by hand, shared mask, no parameter gradients, determinism, and the tiny DiffVQA path."
import math

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


def _answer_logits_from_tokens(model, q_ids, q_mask, a_ids, a_mask):
    "What DiffVQA.encode + forward do after φ, starting from the (unmasked) tokens: the logits the decoder gives the answer."
    def fn(fm, fr):
        B, N = fm.shape[:2]
        img_main, img_ref = model.projector(torch.cat([fm, fr])).chunk(2)
        wte = model.decoder.get_input_embeddings()
        text = model.text_encoder(wte(q_ids), q_mask)
        s_img, s_qtn, s_ans = (e.expand(B, 1, -1) for e in wte(model.special_ids).unsqueeze(1))
        embeds = torch.cat([s_img, img_main, s_img, img_ref, s_qtn, text, s_ans, wte(a_ids[:, :-1])], dim=1)
        ones = torch.ones(B, 2 * img_main.shape[1] + 3, dtype=torch.long)   # grid tokens (+ the summary token)
        attn = torch.cat([ones, q_mask.long(), ones[:, :1], a_mask[:, :-1].long()], dim=1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return model.decoder(inputs_embeds=embeds, attention_mask=attn, position_ids=pos, use_cache=False,
                             logits_to_keep=a_ids.shape[1]).logits
    return fn


def test_tiny_diffvqa_keyword_saliency(tok):
    "The interface fits the real model: φ tokens, its decoder as answer_logits, two-pass style under no_grad."
    from diffvqa.model import DiffVQA
    torch.manual_seed(0)
    model = DiffVQA.from_preset('tiny', tokenizer=tok).eval()
    S = model.config.image_size
    g = torch.Generator().manual_seed(0)
    main, ref = torch.rand(2, 1, S, S, generator=g), torch.rand(2, 1, S, S, generator=g)
    questions, answers = [DIFFERENCE_QUESTION, view_question(0)], [difference_answer(added=['pneumothorax']).strip(), 'PA view']
    q = tok(questions, add_special_tokens=False, padding=True, return_tensors='pt')
    A, _ = _pad(tok, answers)
    a_mask = (A != tok.pad_token_id).long()
    kws, target = keyword_targets(tok, A, questions, answers)
    assert kws == [Keyword('pneumothorax', 'added'), None]
    fn = _answer_logits_from_tokens(model, q['input_ids'], q['attention_mask'], A, a_mask)
    with torch.no_grad():
        reg = model.registration(main, ref)
        f, grid = model.image_encoder(torch.cat([reg.registered, ref]))
        f_main, f_ref = f.chunk(2)
        s1 = keyword_saliency(f_main, f_ref, grid, fn, A, target, S)
        s2 = keyword_saliency(f_main, f_ref, grid, fn, A, target, S)
    for k in ('mask', 'cam_main', 'cam_ref', 'logprob'): assert torch.equal(getattr(s1, k), getattr(s2, k)), k
    assert all(p.grad is None for p in model.parameters())
    assert s1.mask.shape == (2, 1, S, S) and s1.cam_main.shape == (2, 1, *grid)
    assert s1.cam_main[0].amax() == 1. and s1.mask[0].amax() == 1. and s1.mask[0].amin() < 1.
    assert torch.equal(s1.mask[1], torch.ones(1, S, S))  # 'PA view': no keyword, no saliency
    assert s1.logprob[0] < 0 and s1.logprob[1] == 0
    # Grad-CAM through the full graph (φ included) gives the same maps as the leaf re-entry
    f, _ = model.image_encoder(torch.cat([reg.registered, ref]))
    f_main, f_ref = f.chunk(2)
    obj = keyword_logprob(fn(f_main, f_ref), A, target).sum()
    torch.testing.assert_close(grad_cam(f_main, obj, grid), s1.cam_main, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)
