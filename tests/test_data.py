"Tests of diffvqa.data: release reading, traps, the resumable image cache, datasets and loaders."
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffvqa.core import DiffVQAError, ModelConfig
from diffvqa import data as D
from diffvqa import loaders as L
from diffvqa.testing import make_fake_mimic

CACHE_FILES = ('images.u8', 'images.csv', 'questions.csv', 'skipped.csv', 'meta.json')


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
    return make_fake_mimic(tmp_path_factory.mktemp('mimic'), n_subjects=6, seed=1)


@pytest.fixture(scope='module')
def cache_dir(fake, tmp_path_factory):
    return D.prepare(fake.root, tmp_path_factory.mktemp('c')/'cache', size=32, skip_missing=True, progress=False)


@pytest.fixture(scope='module')
def tok(cache_dir):
    return L.get_tokenizer(cache_dir, ModelConfig(tokenizer='bpe', bpe_vocab_size=300))


# --- reading and validating -------------------------------------------------------------------------------------

@pytest.mark.parametrize('edit,msg', [
    (lambda df: df.drop(columns=['answer']), "missing column(s) ['answer']"),
    (lambda df: df.assign(question_type=['differences'] + list(df.question_type[1:])), "unknown question_type ['differences']"),
    (lambda df: df.assign(split=['dev'] + list(df.split[1:])), "unknown split ['dev']"),
    (lambda df: df.assign(ref_id=['5.5'] + list(df.ref_id[1:].astype(str))), 'column ref_id has a non-integer value'),
])
def test_read_questions_rejects_bad_tables(fake, tmp_path, edit, msg):
    df = pd.read_csv(fake.questions, dtype=str, keep_default_na=False)
    bad = tmp_path/'q.csv'
    edit(df).to_csv(bad, index=False)
    with pytest.raises(DiffVQAError) as e: D.read_questions(bad)
    text = str(e.value)
    assert msg in text and str(bad) in text and '\n' not in text


def test_image_rule_and_trap_counts(fake):
    rep = D.inspect_release(fake.root)
    img = rep.images.set_index('study_id')
    assert img.loc[fake.lateral_first, 'view'] == 'PA'            # first frontal image, not the first row
    assert img.loc[fake.lateral_first, 'source'] == 'metadata'     # mimic_all left it blank
    assert img.loc[fake.lateral_only, 'view'] == 'lateral' and not img.loc[fake.lateral_only, 'frontal']
    assert rep.no_frontal == 1
    assert rep.reversed_pairs == {t: int(t == 'difference') for t in rep.reversed_pairs}
    assert rep.missing == [fake.missing_path]
    assert rep.questions.qid.tolist() == list(range(len(rep.questions)))


def test_mimic_all_choice_wins_over_metadata(fake, tmp_path):
    "When mimic_all.csv names a dicom_id it is used even if the metadata rule would pick another image."
    meta = pd.read_csv(fake.root/D.METADATA_CSV, dtype=str)
    alls = pd.read_csv(fake.root/D.ALL_CSV, dtype=str, keep_default_na=False)
    sid = str(fake.lateral_first)
    lateral = meta[(meta.study_id == sid) & (meta.ViewPosition == 'LATERAL')].dicom_id.item()
    alls.loc[alls.study_id == sid, 'dicom_id'] = lateral
    alls.to_csv(tmp_path/'all.csv', index=False)
    ch = D.choose_images(pd.DataFrame(dict(subject_id=[0], study_id=[int(sid)])), tmp_path/'all.csv', fake.root/D.METADATA_CSV)
    assert ch.dicom_id.item() == lateral and ch.source.item() == 'mimic_all'


def test_fix_order_swaps_difference_rows_and_answers(fake, tmp_path):
    before = tree_digest(fake.root)
    plain = D.inspect_release(fake.root)
    fixed = D.inspect_release(fake.root, fix_order=True)
    i = fake.reversed_qid
    a, b = plain.questions.loc[i], fixed.questions.loc[i]
    assert (b.study_id, b.ref_id) == (a.ref_id, a.study_id) and b.swapped and fixed.swapped == 1
    assert b.answer == D.swap_difference_answer(a.answer)
    others = fixed.questions.drop(index=i)
    assert not others.swapped.any()
    pd.testing.assert_frame_equal(others.drop(columns='swapped'), plain.questions.drop(index=i).drop(columns='swapped'))
    out = D.prepare(fake.root, tmp_path/'c', size=16, fix_order=True, skip_missing=True, progress=False)
    q = pd.read_csv(out/'questions.csv')
    assert q.set_index('qid').loc[i, 'study_id'] == a.ref_id
    assert json.loads((out/'meta.json').read_text())['report']['swapped'] == 1
    assert tree_digest(fake.root) == before                       # the dataset is never modified


# --- missing and unreadable images --------------------------------------------------------------------------------

def test_missing_file_stops_prepare_with_one_line(fake, tmp_path):
    with pytest.raises(DiffVQAError) as e: D.prepare(fake.root, tmp_path/'c', size=16, progress=False)
    msg = str(e.value)
    assert '1 image file(s) missing' in msg and fake.missing_path in msg and '\n' not in msg
    assert not (tmp_path/'c'/'meta.json').exists()


def test_corrupt_jpeg_stops_prepare_then_skip_resumes(tmp_path):
    fk = make_fake_mimic(tmp_path/'m', n_subjects=6, seed=2)
    shutil.copy(next((fk.root/'files').rglob('*.jpg')), fk.root/fk.missing_path)   # only the corrupt file remains
    with pytest.raises(DiffVQAError) as e: D.prepare(fk.root, tmp_path/'c', size=16, progress=False)
    assert '1 image file(s) unreadable or truncated' in str(e.value) and fk.corrupt_path in str(e.value)
    assert (tmp_path/'c'/'.partial'/'status.u8').exists() and not (tmp_path/'c'/'meta.json').exists()
    out = D.prepare(fk.root, tmp_path/'c', size=16, skip_missing=True, progress=False)
    sk = pd.read_csv(out/'skipped.csv')
    assert sk.path.tolist() == [fk.corrupt_path] and sk.reason.tolist() == ['unreadable']


def test_skip_missing_drops_affected_questions(fake, cache_dir):
    sk = pd.read_csv(cache_dir/'skipped.csv')
    assert sk.study_id.dtype == np.int64
    assert dict(zip(sk.path, sk.reason)) == {fake.missing_path: 'missing', fake.corrupt_path: 'unreadable'}
    q, idx = pd.read_csv(cache_dir/'questions.csv'), pd.read_csv(cache_dir/'images.csv')
    bad = set(sk.study_id)
    assert not (q.study_id.isin(bad) | q.ref_id.isin(bad)).any()
    assert sk.questions_dropped.sum() == len(pd.read_csv(fake.questions)) - len(q)
    ok_rows = set(idx.row[idx.ok])
    assert set(q.main_row) <= ok_rows and set(q.ref_row) <= ok_rows
    assert not (cache_dir/'.partial').exists()


# --- the cache ----------------------------------------------------------------------------------------------------

def test_cache_rows_equal_decoded_images_of_all_shapes(fake, cache_dir):
    cache = D.PairCache(cache_dir)
    idx = cache.images[cache.images.ok]
    meta = pd.read_csv(fake.root/D.METADATA_CSV).set_index('dicom_id')
    assert len(set(zip(idx.height, idx.width))) >= 3                      # images of different sizes
    for r in idx.itertuples():
        a, hw = D.load_image(fake.root/r.path, 32, 'pad')
        np.testing.assert_array_equal(cache.image(r.row), a)
        assert hw == (r.height, r.width) == (meta.Rows[r.dicom_id], meta.Columns[r.dicom_id])
    r = idx[idx.height > idx.width].iloc[0]                                # portrait: padded left and right
    nw = round(r.width * 32 / r.height); x0 = (32 - nw) // 2
    a = cache.image(r.row)
    assert a[:, :x0].max() == 0 and a[:, x0 + nw:].max() == 0 and a[:, x0:x0 + nw].min() > 0
    m = json.loads((cache_dir/'meta.json').read_text())
    assert os.path.getsize(cache_dir/'images.u8') == np.prod(m['shape']) and m['fit'] == 'pad'


def test_prepare_refuses_to_write_into_the_dataset(fake):
    before = tree_digest(fake.root)
    for out in (fake.root, fake.root/'files'/'cache'):
        with pytest.raises(DiffVQAError, match='never written to'): D.prepare(fake.root, out, size=16, progress=False)
    assert tree_digest(fake.root) == before


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(DiffVQAError, match='not a prepared cache'): D.PairCache(tmp_path)


KILL_SCRIPT = textwrap.dedent('''
    import sys, time
    import diffvqa.data as D
    orig = D.load_image
    def slow(*a, **k):
        time.sleep(0.04)
        return orig(*a, **k)
    D.load_image = slow
    D.prepare(sys.argv[1], sys.argv[2], size=24, workers=2, skip_missing=True, progress=False)
''')


def test_prepare_resumes_after_sigkill_byte_identical(tmp_path, monkeypatch):
    fk = make_fake_mimic(tmp_path/'m', n_subjects=14, seed=3)
    full = D.prepare(fk.root, tmp_path/'full', size=24, skip_missing=True, progress=False)
    n = json.loads((full/'meta.json').read_text())['shape'][0]
    (tmp_path/'kill.py').write_text(KILL_SCRIPT)
    out = tmp_path/'killed'
    status = out/'.partial'/'status.u8'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
    proc = subprocess.Popen([sys.executable, str(tmp_path/'kill.py'), str(fk.root), str(out)],
                            start_new_session=True, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if status.exists() and (np.fromfile(status, np.uint8) == 1).sum() >= n // 3: break
        time.sleep(0.01)
    assert proc.poll() is None, f'prepare ended before it could be killed: {proc.stderr.read().decode()[-500:]}'
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(); proc.stderr.close()
    done = int((np.fromfile(status, np.uint8) == 1).sum())
    assert 0 < done < n and not (out/'meta.json').exists()
    calls = []
    orig = D.load_image
    monkeypatch.setattr(D, 'load_image', lambda *a, **k: calls.append(a[0]) or orig(*a, **k))
    D.prepare(fk.root, out, size=24, workers=1, skip_missing=True, progress=False)
    assert len(calls) == n - done                                           # finished images are not redone
    for f in CACHE_FILES: assert (out/f).read_bytes() == (full/f).read_bytes(), f
    assert not (out/'.partial').exists()
    calls.clear()
    D.prepare(fk.root, out, size=24, fix_order=True, skip_missing=True, progress=False)   # same images, new tables
    assert calls == [str(fk.root/fk.corrupt_path)]                          # only the failed image is retried
    assert (out/'images.u8').read_bytes() == (full/'images.u8').read_bytes()


# --- tokenizer, datasets, loaders -----------------------------------------------------------------------------------

def test_get_tokenizer(cache_dir, tok, tmp_path):
    texts = L.split_texts(cache_dir, 'train')
    q = pd.read_csv(cache_dir/'questions.csv', keep_default_na=False)
    assert len(texts) == 2 * (q.split == 'train').sum()
    assert len(tok) > 50 and tok.pad_token_id is not None and tok.eos_token_id is not None
    with pytest.raises(DiffVQAError, match='no tokenizer files'):
        L.get_tokenizer(cache_dir, ModelConfig(tokenizer=str(tmp_path/'absent')))
    with pytest.raises(DiffVQAError, match='no text'):
        L.get_tokenizer([], ModelConfig(tokenizer='bpe'))


def test_dataset_items_and_question_type_selection(cache_dir, tok):
    q = pd.read_csv(cache_dir/'questions.csv', keep_default_na=False)
    diff = L.PairDataset(cache_dir, tok, 'train')
    assert len(diff) == ((q.split == 'train') & (q.question_type == 'difference')).sum()
    two = L.PairDataset(cache_dir, tok, 'train', question_types=('presence', 'view'))
    assert set(two.q.question_type) == {'presence', 'view'}
    it = L.PairDataset(cache_dir, tok, 'val', question_types=None)[0]
    cache = D.PairCache(cache_dir)
    row = q.set_index('qid').loc[it.qid]
    assert (it.study_id, it.ref_id, it.subject_id, it.question, it.answer) == \
           (row.study_id, row.ref_id, row.subject_id, row.question, row.answer)
    assert torch.equal(it.main[0], torch.from_numpy(cache.image(row.main_row))) and it.main.dtype == torch.uint8
    assert torch.equal(it.ref[0], torch.from_numpy(cache.image(row.ref_row)))
    assert torch.equal(it.aug, torch.ones(2, 3))                                # val: no augmentation
    assert it.answer_ids[-1] == tok.eos_token_id and tok.decode(it.answer_ids[:-1]) == row.answer.strip()
    assert tok.decode(it.question_ids) == row.question
    with pytest.raises(DiffVQAError, match='unknown'): L.PairDataset(cache_dir, tok, 'train', question_types=('diff',))


def test_augmentation_train_only_and_seeded(cache_dir, tok):
    a = L.PairDataset(cache_dir, tok, 'train', seed=5)
    b = L.PairDataset(cache_dir, tok, 'train', seed=5)
    c = L.PairDataset(cache_dir, tok, 'train', seed=6)
    plain = L.PairDataset(cache_dir, tok, 'train', augment=False)
    assert torch.equal(a[0].aug, b[0].aug) and not torch.equal(a[0].aug, c[0].aug)
    assert not torch.equal(a[0].aug[0], a[0].aug[1])                            # independent draws per image
    assert ((a[0].aug - 1).abs() <= torch.tensor([.2, .2, .5]) + 1e-6).all()
    ba, bp = L.collate_pairs([a[0], a[1]], tok.pad_token_id), L.collate_pairs([plain[0], plain[1]], tok.pad_token_id)
    assert not torch.equal(ba.main, bp.main) and ba.main.min() >= 0 and ba.main.max() <= 1
    torch.testing.assert_close(ba.main[1], L.adjust_image(bp.main[1], *a[1].aug[0].tolist()))
    torch.testing.assert_close(ba.ref[0], L.adjust_image(bp.ref[0], *a[0].aug[1].tolist()))


def test_truncation_and_padding(cache_dir, tok):
    ds = L.PairDataset(cache_dir, tok, 'train', question_types=None, augment=False, max_question_len=3, max_answer_len=4)
    items = [ds[i] for i in range(len(ds))]
    assert max(len(i.question_ids) for i in items) == 3 and max(len(i.answer_ids) for i in items) == 4
    b = L.collate_pairs(items[:5], tok.pad_token_id)
    assert b.answer_mask.sum(1).tolist() == [len(i.answer_ids) for i in items[:5]]
    assert (b.answer_ids[b.answer_mask == 0] == tok.pad_token_id).all()
    assert b.main.shape == (5, 1, 32, 32) and b.main.dtype == torch.float32


def test_fastai_dataloaders(cache_dir, tok):
    dls = L.get_dataloaders(cache_dir, tok, bs=3, bs_valid=2, question_types=None, device='cpu')
    xb = dls.train.one_batch()
    assert len(xb) == 10 and dls.n_inp == 8
    main, ref, qi, qm, ai, am, pair_ids, has_ref, y, changes = xb
    assert pair_ids.dtype == torch.long and has_ref.dtype == torch.bool and bool(has_ref.all())
    assert main.shape == ref.shape == (3, 1, 32, 32) and main.dtype == torch.float32
    assert qi.shape == qm.shape and ai.shape == am.shape and torch.equal(ai, y)
    assert qi.dtype == ai.dtype == torch.long
    assert 0 <= main.min() and main.max() <= 1
    vb = dls.valid.one_batch()
    plain = L.collate_pairs([dls.valid.dataset[i] for i in range(2)], tok.pad_token_id)
    assert torch.equal(vb[0], plain.main) and torch.equal(vb[1], plain.ref)     # validation: unaugmented
    n_val = sum(len(b[0]) for b in dls.valid)
    assert n_val == len(D.PairCache(cache_dir).select('val'))
    e0 = dls.train.dataset.epoch
    list(dls.train); list(dls.train)
    assert dls.train.dataset.epoch == e0 + 2                                   # new augmentation draws each epoch


def test_iter_split_keeps_every_question_once_with_metadata(cache_dir, tok):
    want = D.PairCache(cache_dir).select('test', None)
    batches = list(L.iter_split(cache_dir, tok, 'test', question_types=None, bs=4))
    assert [q for b in batches for q in b.qid] == want.qid.tolist()
    b = batches[0]
    assert b.question == want.question[:len(b)].tolist() and b.question_type == want.question_type[:len(b)].tolist()
    assert len(b.inputs()) == 8 and len(b.as_tuple()) == 10
    assert len(list(L.iter_split(cache_dir, tok, 'test', None, bs=4, limit=2))[0]) == 2


# --- command line --------------------------------------------------------------------------------------------------

def test_cli_prepare(fake, tmp_path, capsys):
    from diffvqa.cli import main
    rc = main(['prepare', '--mimic-root', str(fake.root), '--out', str(tmp_path/'c'), '--size', '16', '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith('error: ') and 'missing' in err and '\n' not in err
    rc = main(['prepare', '--mimic-root', str(fake.root), '--questions', str(fake.questions), '--out', str(tmp_path/'c'),
               '--size', '16', '--workers', '2', '--skip-missing', '--fix-order', '--no-progress'])
    out = capsys.readouterr().out
    assert rc == 0 and 'swapped 1' in out and (tmp_path/'c'/'meta.json').exists()


# --- ground truth of synthetic trees, and the synthetic benchmark itself ------------------------------------------

def test_change_masks_from_synth_style_ground_truth(tmp_path):
    fk = make_fake_mimic(tmp_path/'m', n_subjects=3, traps=False, ground_truth=True)
    cache = D.PairCache(D.prepare(fk.root, tmp_path/'c', size=32, progress=False))
    assert cache.meta['has_change_masks']
    d = cache.questions[cache.questions.question_type == 'difference']
    assert (d.change_mask != '').all()
    r = d.iloc[0]
    m = cache.change_mask(r.study_id, r.ref_id)
    src = np.asarray(Image.open(fk.root/r.change_mask))
    expect = D.fit_image(Image.fromarray(src), 32, 'pad') >= 128
    assert m.dtype == bool and np.array_equal(m, expect) and 0 < m.sum() < m.size
    assert cache.change_mask(r.study_id, 123) is None


@pytest.mark.slow
def test_synthetic_benchmark_prepares(tmp_path, tok):
    "The synthetic benchmark (issue 2) loads through the same code; slow because synth renders DRRs."
    synth = pytest.importorskip('diffvqa.synth')
    synth.synthesize(tmp_path/'s', n_pairs=4, size=64, seed=0, progress=False)
    out = D.prepare(tmp_path/'s', tmp_path/'c', size=32, progress=False)
    cache = D.PairCache(out)
    r = cache.meta['report']
    assert r['missing'] == r['unreadable'] == r['unlisted'] == 0 and sum(r['reversed_pairs'].values()) == 0
    d = cache.questions[cache.questions.question_type == 'difference']
    assert len(d) == 4 and cache.meta['has_change_masks']
    m = cache.change_mask(d.study_id.iloc[0], d.ref_id.iloc[0])
    assert m is not None and m.shape == (32, 32)
    b = next(L.iter_split(out, tok, d.split.iloc[0], None, bs=2))
    assert b.main.shape[1:] == (1, 32, 32)


# --- issue "what users hit first": one spelling per question, glued answers, long questions, 16-bit films ----------

SPELLINGS = ['what has changed compared to the reference image?', '  What has changed compared to the Reference Image ?  ',
             'WHAT HAS CHANGED COMPARED TO THE REFERENCE IMAGE']
GLUED = ('the main image has additional findings of lung opacity, and pneumonia atelectasis, granuloma, and pneumonia '
         'than the reference image. ')


def edited_release(fake, cache_dir, path, answers=None, questions=None):
    "The fake release's question CSV with some difference rows (those whose images exist) edited; returns (csv, qids)."
    df = pd.read_csv(fake.questions, dtype=str, keep_default_na=False)
    qids = D.PairCache(cache_dir).select(None, ('difference',)).qid.tolist()
    for i, a in zip(qids, answers or []): df.loc[i, 'answer'] = a
    for i, q in zip(qids, questions or []): df.loc[i, 'question'] = q
    df.to_csv(path, index=False)
    return path, qids


def test_equivalent_spellings_give_identical_token_ids_in_every_loader(fake, cache_dir, tok, tmp_path):
    qs = [SPELLINGS[i % 3] for i in range(len(D.PairCache(cache_dir).select(None, ('difference',))))]
    csv, _ = edited_release(fake, cache_dir, tmp_path/'q.csv', questions=qs)
    out = D.prepare(fake.root, tmp_path/'c', questions=csv, size=32, skip_missing=True, progress=False)
    want = D.encode_questions(tok, [SPELLINGS[0]])[0].tolist()
    assert want == tok(SPELLINGS[0], add_special_tokens=False)['input_ids']            # the release form is a fixed point
    for split in D.SPLITS:
        ds = L.PairDataset(out, tok, split, ('difference',), augment=False)
        assert {ds[i].question for i in range(len(ds))} <= set(SPELLINGS)
        assert all(ds[i].question_ids.tolist() == want for i in range(len(ds)))         # train (and val, test) items
        for b in L.iter_split(out, tok, split, ('difference',), bs=4):                   # what evaluation feeds
            assert (b.question_ids == torch.tensor(want)).all() and b.question_mask.all()
    dls = L.get_dataloaders(out, tok, bs=2, bs_valid=2, device='cpu')
    assert (dls.train.one_batch()[2] == torch.tensor(want)).all()                        # what training feeds
    assert set(L.split_texts(out, 'train')) >= {SPELLINGS[0]} and not set(L.split_texts(out, 'train')) & set(SPELLINGS[1:])


@pytest.mark.parametrize('repair', [True, False])
def test_glued_answers_are_counted_and_repaired(fake, cache_dir, tmp_path, repair):
    answers = [GLUED,
               'the main image is missing the findings of edema, and pneumonia and pneumonia than the reference image. ',
               'the main image has an additional finding of infection than the reference image. ']
    csv, qids = edited_release(fake, cache_dir, tmp_path/'q.csv', answers=answers)
    out = D.prepare(fake.root, tmp_path/'c', questions=csv, size=32, skip_missing=True, progress=False, repair_answers=repair)
    meta = json.loads((out/'meta.json').read_text())
    r = meta['report']
    assert (r['glued_answers'], r['answers_repaired'], r['unknown_findings']) == (2, 2 if repair else 0, {'infection': 1})
    assert meta['repair_answers'] is repair
    got = pd.read_csv(out/'questions.csv', keep_default_na=False).set_index('qid').answer
    if repair:
        assert got[qids[0]] == ('the main image has additional findings of lung opacity, pneumonia, atelectasis, and granuloma '
                                'than the reference image. ')
        assert got[qids[1]] == 'the main image is missing the findings of edema, and pneumonia than the reference image. '
    else: assert got[qids[0]] == GLUED and got[qids[1]] == answers[1]
    assert got[qids[2]] == answers[2]                                                   # unknown names are reported, not changed


def test_cli_prepare_reports_glue_and_long_questions(fake, cache_dir, tmp_path, capsys):
    from diffvqa.cli import main
    long_q = 'is there ' + ' and '.join(['pleural effusion'] * 30) + '?'              # 61 words
    csv, qids = edited_release(fake, cache_dir, tmp_path/'q.csv', answers=[GLUED], questions=[long_q])
    rc = main(['prepare', '--mimic-root', str(fake.root), '--questions', str(csv), '--out', str(tmp_path/'c'),
               '--size', '16', '--skip-missing', '--no-progress', '--no-answer-repair'])
    out = capsys.readouterr().out
    assert rc == 0
    assert 'difference answers with glued or repeated findings: 1 (left as they are)' in out
    r = json.loads((tmp_path/'c'/'meta.json').read_text())['report']
    assert 'questions longer than tiny max_question_len=24 tokens (cut): 1' in out
    assert 'questions longer than paper max_question_len=32 tokens (cut): 1' in out
    tiny, paper = r['long_questions']['tiny'], r['long_questions']['paper']
    assert (tiny['cut'], tiny['max_question_len'], paper['cut'], paper['max_question_len']) == (1, 24, 1, 32)
    # tiny's count is in the very tokens tiny trains with: the BPE get_tokenizer builds from this cache
    from diffvqa.core import get_preset
    tok = L.get_tokenizer(tmp_path/'c', get_preset('tiny').model)
    lengths = [len(ids) for ids in D.encode_questions(tok, D.PairCache(tmp_path/'c').questions.question)]
    assert sum(n > 24 for n in lengths) == 1 and tiny['longest'] == max(lengths)
    try: D.load_tokenizer('gpt2'); has_gpt2 = True
    except DiffVQAError: has_gpt2 = False
    assert paper['tokenizer'] == 'gpt2' if has_gpt2 else paper['tokenizer'].startswith('stand-in for gpt2')


def test_16bit_film_in_the_cache_gets_the_mimic_recipe(fake, cache_dir, tmp_path):
    "A 16-bit PNG in the tree is cached as predict reads it: equalised by default, stretched only with the flag."
    root = tmp_path/'m'
    shutil.copytree(fake.root, root)
    img = pd.read_csv(cache_dir/'images.csv', keep_default_na=False)
    rel = img.path[img.ok.astype(bool)].iloc[0]
    yy, xx = np.mgrid[0:90, 0:70]
    g16 = (300 + 3000 * np.exp(-((xx - 20) ** 2 + (yy - 40) ** 2) / 300) + 10 * yy).astype(np.uint16)
    Image.fromarray(g16).save(root/rel, format='PNG')                                 # PNG bytes under the .jpg name
    on = D.PairCache(D.prepare(root, tmp_path/'on', size=32, skip_missing=True, progress=False))
    off = D.PairCache(D.prepare(root, tmp_path/'off', size=32, skip_missing=True, progress=False, mimic_conversion=False))
    row = int(on.images.set_index('path').row[rel])
    with Image.open(root/rel) as im:
        assert np.array_equal(on.image(row), D.fit_image(im, 32, 'pad'))
        assert np.array_equal(off.image(row), D.fit_image(im, 32, 'pad', mimic_conversion=False))
    from diffvqa.predict import read_image
    assert np.array_equal(on.image(row), read_image(root/rel, size=32))                 # one code path with predict
    assert np.abs(on.image(row).astype(int) - off.image(row)).max() > 20
    assert on.meta['mimic_conversion'] is True and off.meta['mimic_conversion'] is False
    assert on.meta['plan_sha256'] != off.meta['plan_sha256']
