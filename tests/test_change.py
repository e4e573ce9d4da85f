"""The tiny preset's change CNN (early fusion of a pair): its pretraining targets, its pairs, a cue it can only read from the films, and how the model uses it."""
import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from diffvqa.core import DiffVQAError, PretrainConfig, get_preset
from diffvqa.metrics import auroc
from diffvqa.model import CHANGE_READOUT, CHANGE_SWAP, ChangeEncoder, DiffVQA, grade_pair, readout_kinds, write_difference
from diffvqa.pretrain import CHANGE_TARGETS, FilmLabels, _pair_films, change_pairs, change_targets, keep_readout, pretrain_change
from diffvqa.templates import CHANGE_KINDS, FINDINGS, parse_difference_answer
from diffvqa.tokenizer import train_bpe_tokenizer

os.environ.setdefault('HF_HUB_OFFLINE', '1')
torch.set_num_threads(2)


def test_change_targets_by_hand():
    findings = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    pairs = np.array([[0, 1], [2, 0], [1, 2]])
    t = change_targets(findings, pairs)  # presence only: appeared then resolved, every level block empty
    assert t.shape == (3, len(CHANGE_TARGETS) * 2)
    assert t[:, :4].tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]] and t[:, 4:].sum() == 0
    levels = np.array([[2, 0], [0, 1], [1, 3]])  # severity ranks of the same films (0 absent)
    t = change_targets(findings, pairs, levels).reshape(3, len(CHANGE_TARGETS), 2)
    # blocks: appeared, resolved, worsened, improved, main ≥ 2, main ≥ 3, reference ≥ 2, reference ≥ 3
    assert t[0].tolist() == [[1, 0], [0, 1], [0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]]
    assert t[1].tolist() == [[0, 1], [0, 0], [0, 0], [1, 0], [0, 1], [0, 1], [1, 0], [0, 0]]
    assert t[2].tolist() == [[0, 0], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0], [0, 1], [0, 1]]


def test_change_pairs_are_ordered_and_within_one_subject():
    films = pd.DataFrame(dict(subject_id=[1, 1, 2, 2, 2, 3]))
    p = change_pairs(films, np.arange(6))
    assert len(p) == 2 + 6 and all(films.subject_id[a] == films.subject_id[b] and a != b for a, b in p)
    assert {(0, 1), (1, 0)} <= set(map(tuple, p.tolist()))
    assert len(change_pairs(films, np.array([0, 2, 3, 5]))) == 2      # only films in idx: subject 2's films 2 and 3
    assert change_pairs(films, np.array([5])).shape == (0, 2)


def _subject_films(n_subjects: int, size: int = 64, seed: int = 0):
    "Per subject a smooth anatomy of its own, two films: one clear, one with a square on the left (finding 0) or right (1)."
    rng = np.random.default_rng(seed)
    x, Y, sub = [], [], []
    for s in range(n_subjects):
        base = np.kron(rng.uniform(0.2, 0.8, (8, 8)), np.ones((size // 8, size // 8))).astype(np.float32)
        side = s % 2
        for lesion in (False, True):
            f = base + rng.normal(0, 0.03, base.shape).astype(np.float32)
            if lesion:
                r = rng.integers(8, size - 24); c = rng.integers(4, size // 2 - 20) + side * size // 2
                f[r:r + 16, c:c + 16] += 0.3          # the same brightness on either side: only where it is tells them apart
            x.append(np.clip(f, 0, 1)); Y.append([lesion and side == 0, lesion and side == 1]); sub.append(s)
    return np.round(np.stack(x) * 255).astype(np.uint8), np.array(Y, np.float32), np.array(sub)


def test_change_cnn_learns_which_side_changed():
    "Trained on same-subject pairs, the CNN tells a new finding on the left from one on the right, and appeared from resolved."
    x, Y, sub = _subject_films(96)
    cache = SimpleNamespace(array=x, size=64)
    films = pd.DataFrame(dict(row=np.arange(len(x)), subject_id=sub))
    names = ['edema', 'pneumonia']  # finding 0 on the left, 1 on the right
    labels = FilmLabels(names, np.zeros(len(x), np.int64), Y, [[] for _ in x], 'ground_truth')
    mcfg = get_preset('tiny').model
    mcfg.change_width = 32
    fit, held = np.flatnonzero(sub < 80), np.flatnonzero(sub >= 80)
    net, rep = pretrain_change(cache, films, labels, fit, held, mcfg, PretrainConfig(epochs_change=25, bs=16, lr=3e-3), progress=False)
    assert isinstance(net, ChangeEncoder) and rep['n_pairs'] == 160 and rep['n_heldout_pairs'] == 32
    assert min(rep['auroc'].values()) > 0.9 and rep['f1'] > 0.8, rep
    H = change_pairs(films, held)   # the readout the CNN keeps gives the model the same answers, in FINDINGS columns
    with torch.no_grad(): k = net.kind_logits(net(*_pair_films(cache, films.row.to_numpy(), H))).view(len(H), len(CHANGE_KINDS), len(FINDINGS))
    t = change_targets(Y, H)
    for j, name in enumerate(names):
        assert auroc(k[:, 0, FINDINGS.index(name)].numpy(), t[:, j].numpy()) > 0.9            # added = appeared
        assert auroc(k[:, 1, FINDINGS.index(name)].numpy(), t[:, len(names) + j].numpy()) > 0.9  # removed = resolved


def test_keep_readout_by_hand():
    "Every block of the pretraining head (what changed, then each film's grade) lands in FINDINGS columns; other columns are zero; level = max(worsened, improved)."
    vocab = ['pneumonia', 'not a finding', 'edema']
    head = torch.nn.Linear(2, len(CHANGE_TARGETS) * 3)
    with torch.no_grad(): head.weight.copy_(torch.arange(head.weight.numel(), dtype=torch.float32).view_as(head.weight)); head.bias.copy_(-torch.arange(len(head.bias), dtype=torch.float32))
    net = keep_readout(ChangeEncoder(2), head, vocab)
    Fa, e, p = len(FINDINGS), FINDINGS.index('edema'), FINDINGS.index('pneumonia')
    W, b = torch.cat([net.head.weight, net.grade_head.weight]), torch.cat([net.head.bias, net.grade_head.bias])  # CHANGE_READOUT's blocks in order
    for j in range(len(CHANGE_READOUT)):
        assert torch.equal(W[j * Fa + p], head.weight[j * 3 + 0]) and b[j * Fa + e] == head.bias[j * 3 + 2]
    rest = [r for r in range(len(CHANGE_READOUT) * Fa) if r % Fa not in (e, p)]
    assert W[rest].abs().max() == 0 and b[rest].abs().max() == 0
    torch.testing.assert_close(net.readout(torch.tensor([[1., -2.]]))[0, 5, e], head.weight[5 * 3 + 2] @ torch.tensor([1., -2.]) + head.bias[5 * 3 + 2])
    x = torch.tensor([[1., -2.]])
    y = lambda r: (head.weight[r] @ x[0] + head.bias[r]).item()     # a pretraining-head logit by hand
    k = net.kind_logits(x).view(len(CHANGE_KINDS), Fa)
    assert k[0, e].item() == pytest.approx(y(2)) and k[1, p].item() == pytest.approx(y(3 + 0))
    assert k[2, e].item() == pytest.approx(max(y(6 + 2), y(9 + 2))) and k[:, [r for r in range(Fa) if r not in (e, p)]].abs().max() == 0


def test_change_logits_start_from_the_cnn_readout(tok):
    "The model's change scores are the change CNN's readout plus the fusion's correction, which starts at zero; none without a reference."
    torch.manual_seed(0)
    m = DiffVQA.from_preset('tiny', tokenizer=tok).eval()
    torch.nn.init.normal_(m.change.head.weight)
    g = torch.Generator().manual_seed(0)
    main, ref = torch.rand(2, 1, 128, 128, generator=g), torch.rand(2, 1, 128, 128, generator=g)
    q = tok(['what has changed compared to the reference image?'] * 2, return_tensors='pt')
    pre = m.encode(main, ref, q['input_ids'], q['attention_mask'], has_ref=torch.tensor([True, False]))
    with torch.no_grad():
        registered = m.registration(main[:1], ref[:1]).registered
        want = readout_kinds(m.change.symmetric_readout(registered, ref[:1]))  # tiny reads the pair in both orders
        one_order = m.change.kind_logits(m.change(registered, ref[:1]))
    assert m.config.change_symmetric
    torch.testing.assert_close(pre.change_logits[:1], want)
    assert not torch.allclose(want, one_order)  # the reversed order contributes
    assert pre.change_logits[1].abs().max() == 0 and pre.change_logits[0].abs().max() > 0


def test_symmetric_readout_does_not_depend_on_the_films_order():
    "Reading (ref, main) gives the readout of (main, ref) with its blocks swapped: appeared ↔ resolved, worsened ↔ improved, each film's grades."
    torch.manual_seed(0)
    net = ChangeEncoder(8).eval()
    for lin in (net.head, net.grade_head): torch.nn.init.normal_(lin.weight); torch.nn.init.normal_(lin.bias)
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 1, 32, 32, generator=g), torch.rand(3, 1, 32, 32, generator=g)
    with torch.no_grad(): ab, ba, own = net.symmetric_readout(a, b), net.symmetric_readout(b, a), net.readout(net(a, b))
    torch.testing.assert_close(ba[:, list(CHANGE_SWAP)], ab)
    assert sorted(CHANGE_SWAP) == list(range(len(CHANGE_READOUT))) and all(CHANGE_SWAP[CHANGE_SWAP[i]] == i for i in range(len(CHANGE_SWAP)))
    assert [CHANGE_READOUT[i] for i in CHANGE_SWAP[:4]] == ['resolved', 'appeared', 'improved', 'worsened']
    assert [CHANGE_READOUT[i].split()[0] for i in CHANGE_SWAP[4:]] == ['reference'] * 2 + ['main'] * 2
    with torch.no_grad(): torch.testing.assert_close(ab, (own + net.readout(net(b, a))[:, list(CHANGE_SWAP)]) / 2)  # the mean of the two orders
    torch.testing.assert_close(readout_kinds(ab)[:, :len(FINDINGS)], ab[:, 0])
    torch.testing.assert_close(readout_kinds(ab)[:, 2 * len(FINDINGS):], torch.maximum(ab[:, 2], ab[:, 3]))


def test_grade_head_draws_no_random_numbers():
    "The grade blocks start at zero without a random draw: the random stream after a ChangeEncoder is the one after its convolutions and what-changed head alone."
    from diffvqa.model import _conv_block
    torch.manual_seed(0); net = ChangeEncoder(8); after = torch.rand(3)
    torch.manual_seed(0)
    for i, o, k in zip([3, 16, 32, 64, 128], [16, 32, 64, 128, 8], [1, 1, 2, 2, 2]): _conv_block(i, o, k)
    torch.nn.Linear(8, 4 * len(FINDINGS)); want = torch.rand(3)
    assert torch.equal(after, want) and net.grade_head.weight.abs().max() == 0 and net.grade_head.bias.abs().max() == 0


def test_no_change_cnn_no_pretraining():
    mcfg = get_preset('paper').model
    assert mcfg.change_width == 0
    net, rep = pretrain_change(None, None, FilmLabels(['a'], np.zeros(1), np.zeros((1, 1)), [[]], 'none'), None, None, mcfg, PretrainConfig(), progress=False)
    assert net is None and 'no change CNN' in rep['skipped']


@pytest.fixture(scope='module')
def tok():
    return train_bpe_tokenizer(['what has changed compared to the reference image?', 'nothing has changed.', 'yes.'] * 10, vocab_size=300)


def test_model_reads_the_change_cnn_through_the_answer_fusion(tok, tmp_path):
    "Zero without a reference; read by the answer fusion, so at the start (fusion zero) nothing changes; loaded, it is fixed and stays in eval mode."
    torch.manual_seed(0)
    cfg = get_preset('tiny').model
    assert cfg.change_width > 0 and cfg.fusion_rank > 0
    m = DiffVQA.from_preset(cfg, tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    main, ref = torch.rand(3, 1, 128, 128, generator=g), torch.rand(3, 1, 128, 128, generator=g)
    q = tok(['what has changed compared to the reference image?'] * 3, return_tensors='pt')
    has_ref = torch.tensor([True, True, False])
    parts = m.encode_images(main, ref, has_ref)
    assert parts['change'].shape == (3, cfg.change_width) and parts['change'][2].abs().max() == 0 and parts['change'][0].abs().max() > 0
    D = m.decoder.config.n_embd
    assert m.fusion.image.in_features == 3 * D + cfg.change_width
    pre = m.prefix(parts, q['input_ids'], q['attention_mask'], torch.arange(3))
    assert torch.equal(pre.answer_bias, torch.zeros(3, D))          # the fusion's output layer starts at zero
    torch.nn.init.normal_(m.fusion.out.weight)
    other = dict(parts, change=parts['change'].flip(0))             # another pair's change features, same summaries
    b1, b2 = (m.prefix(p, q['input_ids'], q['attention_mask'], torch.arange(3)).answer_bias for p in (parts, other))
    assert not torch.allclose(b1, b2)                               # the answer slot depends on them
    w = tmp_path/'change.safetensors'
    save_file({k: v.contiguous() for k, v in ChangeEncoder(cfg.change_width).state_dict().items()}, str(w))
    enc = tmp_path/'phi.safetensors'   # every other part random or from a local file: nothing is fetched
    save_file({k: v.contiguous() for k, v in m.image_encoder.backbone.state_dict().items()}, str(enc))
    cfg.change_weights, cfg.image_encoder_weights, cfg.pretrained = str(w), str(enc), True
    m2 = DiffVQA(cfg, tok).train()
    assert not any(p.requires_grad for p in m2.change.parameters()) and not m2.change.training
    assert m2.fusion.image.weight.requires_grad


def test_change_cnn_needs_the_answer_fusion(tok):
    cfg = get_preset('tiny').model
    cfg.fusion_rank = 0
    with pytest.raises(DiffVQAError, match='change_width: the change CNN feeds the answer fusion'):
        DiffVQA.from_preset(cfg, tokenizer=tok)


def test_change_tokens_by_hand(tok):
    "One prefix token per finding, P(kind) × (kind word + finding name) in the decoder's own word embeddings, between the question and <ans>."
    torch.manual_seed(0)
    cfg = get_preset('tiny').model
    assert cfg.change_tokens and not get_preset('paper').model.change_tokens
    m = DiffVQA.from_preset(cfg, tokenizer=tok).eval()
    Fn, i = len(FINDINGS), FINDINGS.index('pleural effusion')
    logits = torch.full((2, len(CHANGE_KINDS) * Fn), -1e4)   # every probability 0 ...
    logits[0, i] = 1e4                                       # ... but pair 0: effusion added (probability 1)
    logits[1, 2 * Fn + i] = 0.                               # pair 1: effusion's level changed (probability 1/2)
    j = FINDINGS.index('pneumonia')
    logits[1, Fn + j] = math.log(1 / 3)                      # ... and pneumonia missing (probability 1/4)
    t = m.change_tokens(logits)
    wte = m.decoder.get_input_embeddings().weight
    emb = lambda w: wte[tok(f' {w}', add_special_tokens=False)['input_ids']].mean(0)
    assert t.shape == (2, Fn, m.decoder.config.n_embd)
    torch.testing.assert_close(t[0, i], emb('additional') + emb('pleural effusion'))
    torch.testing.assert_close(t[1, i], 0.5 * (emb('level') + emb('pleural effusion')))
    torch.testing.assert_close(t[1, j], 0.25 * (emb('missing') + emb('pneumonia')))
    assert t[0, [k for k in range(Fn) if k != i]].abs().max() == 0 and t[1, [k for k in range(Fn) if k not in (i, j)]].abs().max() == 0
    main = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    q = tok(['what has changed compared to the reference image?'] * 2, return_tensors='pt')
    pre = m.encode(main, main.flip(0), q['input_ids'], q['attention_mask'])
    assert pre.question.shape[1] == q['input_ids'].shape[1] + Fn + 2 and pre.attn.shape[1] == pre.image.shape[1] + pre.question.shape[1]
    torch.testing.assert_close(pre.question[:, -1 - Fn:-1], m.change_tokens(pre.change_logits))


def test_change_tokens_need_the_answer_fusion(tok):
    cfg = get_preset('tiny').model
    cfg.fusion_rank, cfg.change_width = 0, 0
    with pytest.raises(DiffVQAError, match='change_tokens: the tokens read the answer fusion'):
        DiffVQA.from_preset(cfg, tokenizer=tok)


def test_pair_films_are_registered_when_a_registration_is_given():
    "The change CNN's pretraining pairs go through the registration as inside the model: main warped, reference untouched."
    import torch
    from diffvqa.pretrain import _pair_films, load_films
    from diffvqa.registration import RegistrationOutput

    class Roll(torch.nn.Module):
        def forward(self, main, ref): return RegistrationOutput(registered=torch.roll(main, 5, -1), theta=torch.eye(2, 3).expand(len(main), 2, 3))

    x, _, _ = _subject_films(2)
    cache, rows, pairs = SimpleNamespace(array=x, size=64), np.arange(len(x)), np.array([[1, 0], [3, 2]])
    main, ref = _pair_films(cache, rows, pairs)
    rmain, rref = _pair_films(cache, rows, pairs, Roll())
    assert torch.equal(main, load_films(cache, np.array([1, 3]))) and torch.equal(ref, load_films(cache, np.array([0, 2])))
    assert torch.equal(rmain, torch.roll(main, 5, -1)) and torch.equal(rref, ref)


def test_grade_pair_by_hand():
    "The grade pair maximises P_ref(r) P_main(m) P(direction): hand-computed products, two- and three-grade findings."
    # blocks: appeared, resolved, worsened, improved, main ≥ 2, main ≥ 3, reference ≥ 2, reference ≥ 3
    p = torch.tensor([0, 0, 0.3, 0.6, 0.8, 0.3, 0.9, 0.6])
    # main grades 1/2/3: 0.2, 0.5, 0.3; reference: 0.1, 0.3, 0.6. (r, m) scores: (1,2) .1*.5*.3=.015, (1,3) .1*.3*.3=.009,
    # (2,1) .3*.2*.6=.036, (2,3) .3*.3*.3=.027, (3,1) .6*.2*.6=.072, (3,2) .6*.5*.6=.18
    assert grade_pair(p, 3) == (3, 2)
    p[2], p[3] = 0.95, 0.01   # now worsened: (2,3) .3*.3*.95 = .0855 beats (3,2) .6*.5*.01
    assert grade_pair(p, 3) == (2, 3)
    assert grade_pair(torch.tensor([0, 0, 0.1, 0.9, 0.2, 0.0, 0.9, 0.0]), 2) == (2, 1)   # two grades: improved, 2 -> 1


def test_write_difference_one_kind_per_finding():
    "Each finding is said once, with its most probable kind, when that reaches the threshold; the answer parses back."
    read, kinds = torch.zeros(len(CHANGE_READOUT), len(FINDINGS)), torch.zeros(len(CHANGE_KINDS), len(FINDINGS))
    e, o, g = FINDINGS.index('edema'), FINDINGS.index('lung opacity'), FINDINGS.index('granuloma')
    kinds[0, e], kinds[1, e] = 0.5, 0.6          # removed wins over added
    kinds[2, o] = 0.7; read[:, o] = torch.tensor([0, 0, 0.1, 0.9, 0.2, 0.0, 0.9, 0.0])  # improved, moderate -> mild
    kinds[2, g] = 0.9                            # granuloma has no grades: no level sentence
    kinds[0, FINDINGS.index('fracture')] = 0.29  # below the threshold
    a = parse_difference_answer(write_difference(read, kinds, threshold=0.3), strict=True)
    assert a.added == () and a.removed == ('edema',)
    assert [(c.finding, c.before, c.after) for c in a.level_changes] == [('lung opacity', 'moderate', 'mild')]


def test_generate_writes_the_difference_answer_from_the_readout(tok):
    "difference_writer 'readout': the whole-image difference question is answered from the readout, other questions and single visits by the decoder, whose answers are kept."
    torch.manual_seed(0)
    m = DiffVQA.from_preset('tiny', tokenizer=tok).eval()
    e = FINDINGS.index('edema')
    with torch.no_grad():
        m.change.head.weight.zero_(); m.change.head.bias.fill_(-10.0); m.change.head.bias[e] = 10.0   # appeared: edema, whatever the films
    g = torch.Generator().manual_seed(0)
    main, ref = torch.rand(3, 1, 128, 128, generator=g), torch.rand(3, 1, 128, 128, generator=g)
    q = tok(['what has changed compared to the reference image?', 'yes.', 'what has changed compared to the reference image?'],
            return_tensors='pt', padding=True)
    out = m.generate(main, ref, q['input_ids'], q['attention_mask'], max_new_tokens=4, has_ref=torch.tensor([True, True, False]))
    assert out.texts[0] == 'the main image has an additional finding of edema than the reference image.'
    assert out.texts[1:] == out.decoder_texts[1:] and out.decoder_texts[0] != out.texts[0]
    m.config.difference_writer = 'decoder'
    again = m.generate(main, ref, q['input_ids'], q['attention_mask'], max_new_tokens=4, has_ref=torch.tensor([True, True, False]))
    assert again.decoder_texts is None and again.texts == out.decoder_texts


def test_difference_writer_is_checked(tok):
    import dataclasses
    cfg = get_preset('tiny').model
    with pytest.raises(DiffVQAError, match='difference_writer: expected one of'):
        DiffVQA.from_preset(dataclasses.replace(cfg, difference_writer='template'), tokenizer=tok)
    with pytest.raises(DiffVQAError, match='difference_writer: readout needs the change CNN'):
        DiffVQA.from_preset(dataclasses.replace(cfg, change_width=0, change_tokens=False, change_copy=False), tokenizer=tok)
