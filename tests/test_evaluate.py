"Metrics: the pycocoevalcap wrapper against direct calls, difference-finding F1 by hand, localisation, baseline, files."
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from diffvqa.core import DiffVQAError
from diffvqa.metrics import (CAPTION_METRICS, auroc, baseline_metrics, caption_metrics, close_meteor, dilate,
                             difference_scores, evaluate_predictions, fit_majority_baseline, localisation_metrics,
                             localisation_scores, majority_baseline_predictions, metrics_markdown, meteor_scorer,
                             write_metrics)
from diffvqa.evaluate import long_questions
from diffvqa.templates import LevelChange, difference_answer

REFS = ['the main image has an additional finding of pneumothorax than the reference image. ',
        'the main image is missing the findings of pleural effusion, pneumothorax, and atelectasis than the reference image. ',
        'the level of pleural effusion has changed from moderate to small. ',
        'nothing has changed.', 'yes', 'PA view', 'left lower lobe', 'nothing has changed.']
PREDS = ['the main image has an additional finding of pneumonia than the reference image. ',
         'the main image is missing the findings of pleural effusion, and atelectasis than the reference image.',
         'the level of pleural effusion has changed from large to small. ',
         'nothing has changed.', 'No.', '', 'the left lower lobe', 'the main image has an additional finding of edema than the reference image. ']


def test_wrapper_equals_direct_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    ours = caption_metrics(PREDS, REFS)
    keys = [f'study{i}_q' for i in range(len(REFS))]
    gts = PTBTokenizer().tokenize({k: [{'caption': r}] for k, r in zip(keys, REFS)})
    res = PTBTokenizer().tokenize({k: [{'caption': p}] for k, p in zip(keys, PREDS)})
    direct_meteor = Meteor()
    try: meteor = direct_meteor.compute_score(gts, res)[0]
    finally: del direct_meteor
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    direct = {'BLEU-1': bleu[0], 'BLEU-2': bleu[1], 'BLEU-3': bleu[2], 'BLEU-4': bleu[3], 'METEOR': meteor,
              'ROUGE-L': Rouge().compute_score(gts, res)[0], 'CIDEr': Cider().compute_score(gts, res)[0]}
    assert list(ours) == list(CAPTION_METRICS)
    for k in CAPTION_METRICS: assert ours[k] == pytest.approx(direct[k], abs=1e-12), k


def test_meteor_process_is_reused():
    p = meteor_scorer().meteor_p
    caption_metrics(REFS[:2], REFS[:2])
    assert meteor_scorer().meteor_p is p and p.poll() is None
    perfect = caption_metrics(REFS, REFS)
    for k in ('BLEU-1', 'BLEU-4', 'METEOR', 'ROUGE-L'): assert perfect[k] == pytest.approx(1., abs=1e-6)


def test_caption_metrics_bad_input():
    with pytest.raises(DiffVQAError, match='3 answers for 2 references'): caption_metrics(PREDS[:3], REFS[:2])
    with pytest.raises(DiffVQAError, match='nothing to score'): caption_metrics([], [])
    zeros = caption_metrics(['', '...'], ['nothing has changed.', 'yes'])  # an untrained model's empty answers
    assert all(v == 0. for v in zeros.values())


def test_difference_f1_on_every_answer_form():
    LC = LevelChange
    R = [difference_answer(['pneumothorax']),
         difference_answer(['consolidation', 'pneumonia']),
         difference_answer(removed=['pleural effusion', 'pneumothorax', 'atelectasis']),
         difference_answer(['edema'], level_changes=[LC('pleural effusion', 'moderate', 'small')]),
         'nothing has changed.', 'nothing has changed.',
         difference_answer(removed=['pneumothorax']),
         difference_answer(level_changes=[LC('edema', 'mild', 'moderate')]),
         difference_answer(removed=['hernia'])]
    G = [difference_answer(['pneumothorax']),                                   # added TP1
         difference_answer(['consolidation']),                                  # added TP1 FN1
         difference_answer(removed=['pleural effusion', 'edema']),              # removed TP1 FP1 FN2
         difference_answer(level_changes=[LC('pleural effusion', 'moderate', 'large')]),  # added FN1, level FP1 FN1
         'nothing has changed.',                                                # no-change TP
         difference_answer(['hernia']),                                         # added FP1, no-change FN
         'nothing has changed.',                                                # removed FN1, no-change FP
         'the level of edema has',                                              # unparseable; level FN1
         'the main image is missing the finding of hernia than the reference image.']  # removed TP1 (no trailing space)
    s = difference_scores(G, R)
    counts = lambda k: [s[k]['tp'], s[k]['fp'], s[k]['fn']]
    assert counts('added') == [2, 1, 2]
    assert counts('removed') == [2, 1, 3]
    assert counts('level') == [0, 1, 2]
    assert counts('all') == [4, 3, 7]
    assert counts('no_change') == [1, 1, 1]
    assert s['removed']['precision'] == pytest.approx(2 / 3) and s['removed']['recall'] == pytest.approx(2 / 5)
    assert s['removed']['f1'] == pytest.approx(4 / 8)
    assert s['all']['f1'] == pytest.approx(8 / 18)
    assert (s['n'], s['n_unparseable'], s['n_reference_unparseable']) == (9, 1, 0)


def test_difference_edge_cases():
    s = difference_scores([''], ['nothing has changed.'])
    assert s['n_unparseable'] == 1 and s['no_change']['fn'] == 1  # empty is not "nothing has changed"
    assert math.isnan(s['all']['f1']) and math.isnan(s['all']['precision'])
    s = difference_scores(['nothing has changed.'], [difference_answer(['edema'])])
    assert math.isnan(s['added']['precision']) and s['added']['recall'] == 0 and s['added']['f1'] == 0
    s = difference_scores(['the main image has additional findings of edema and wombat than the reference image. '],
                          [difference_answer(['edema'])])
    assert s['added']['tp'] == 1 and s['added']['fp'] == 0 and s['n_unknown_findings'] == 1


def test_unknown_finding_names_are_set_apart():
    LC = LevelChange
    gen = [difference_answer(['pneumothorax', 'wombat'], removed=['edemma'], level_changes=[LC('wombat', 'small', 'large')]),
           difference_answer(['hernia']), 'the main image has an additional finding of wombat than the reference image. ']
    ref = [difference_answer(['pneumothorax'], removed=['edema']), difference_answer(['hernia']), 'nothing has changed.']
    s = difference_scores(gen, ref)
    # in vocabulary: pneumothorax TP, hernia TP, edema FN; wombat (x3) and edemma are neither TP nor FP
    assert [s['all'][k] for k in ('tp', 'fp', 'fn')] == [2, 0, 1]
    assert s['all']['precision'] == 1 and s['all']['f1'] == pytest.approx(4 / 5)
    assert s['n_unknown_findings'] == 4 and s['unknown_findings'] == {'wombat': 3, 'edemma': 1}
    assert s['no_change']['fn'] == 1  # claiming a change (even an unknown one) is still not "nothing has changed"
    s = difference_scores([difference_answer(['wombat'])], [difference_answer(['wombat', 'edema'])])
    assert [s['all'][k] for k in ('tp', 'fp', 'fn')] == [0, 0, 1]
    assert (s['n_reference_unknown_findings'], s['reference_unknown_findings']) == (1, {'wombat': 1})
    md = metrics_markdown(evaluate_predictions(pd.DataFrame({
        'question_type': ['difference'] * 3, 'question': ['q'] * 3, 'answer': ref, 'prediction': gen})))
    assert 'set apart and not scored: 4 in generated answers (wombat ×3, edemma), 0 in references' in md


def test_localisation_by_hand():
    T = np.zeros((4, 4), bool); T[:2, :2] = True
    off = np.where(T, .5, 0.); off[3, 3] = 1
    r = localisation_scores(off, T)
    assert r['pointing_game'] == 0 and r['mass_inside'] == pytest.approx(2 / 3) and r['auroc'] == pytest.approx(44 / 48)
    assert localisation_scores(off, T, tolerance=2)['pointing_game'] == 1
    r = localisation_scores(np.ones((4, 4)), T)
    assert (r['pointing_game'], r['mass_inside'], r['auroc']) == (.25, .25, .5)
    assert localisation_scores(np.zeros((4, 4)), T)['mass_inside'] == 0.
    assert localisation_scores(T.astype(float), np.zeros((4, 4), bool)) is None
    agg = localisation_metrics([T.astype(float), off, T.astype(float)], [T, T, np.zeros((4, 4), bool)], tolerance=0)
    assert (agg['n_pairs'], agg['n_skipped_empty']) == (2, 1)
    assert agg['pointing_game'] == pytest.approx(.5) and agg['auroc'] == pytest.approx((1 + 44 / 48) / 2)
    with pytest.raises(DiffVQAError, match='2 masks for 1'): localisation_metrics([T, T], [T])


def test_localisation_accepts_tensors_and_resizes():
    torch = pytest.importorskip('torch')
    T = np.zeros((4, 4), bool); T[:2, :2] = True
    big = torch.tensor(np.kron(T.astype(np.float32), np.ones((2, 2), np.float32)))[None]  # [1,8,8]
    assert localisation_scores(big, torch.tensor(T))['auroc'] == 1.


def test_dilate_and_auroc_against_pair_count():
    g = np.zeros((5, 5), bool); g[2, 2] = True
    assert dilate(g, 1).sum() == 9 and dilate(g, 0).sum() == 1 and dilate(g, 2).all()
    rng = np.random.default_rng(1)
    sc, lab = rng.integers(0, 4, 300), rng.random(300) < .4
    pairs = (sc[lab][:, None] > sc[~lab][None]).mean() + .5 * (sc[lab][:, None] == sc[~lab][None]).mean()
    assert auroc(sc, lab) == pytest.approx(pairs, abs=1e-12)
    assert math.isnan(auroc(sc, np.zeros(300, bool)))


def _table():
    return pd.DataFrame({
        'study_id': [7, 7, 8, 8, 9], 'ref_id': [1, 1, 2, 2, 3],
        'question_type': ['difference', 'difference', 'presence', 'view', 'difference'],
        'question': ['what has changed compared to the reference image?', 'what has changed in the left lung area?',
                     'is there edema?', 'which view is this image taken?', 'what has changed compared to the reference image?'],
        'answer': [REFS[0], REFS[1], 'yes', 'PA view', 'nothing has changed.'],
        'prediction': [REFS[0], PREDS[1], 'Yes', 'AP view', None]})


def test_evaluate_predictions_per_type_and_same_study():
    df = _table()
    m = evaluate_predictions(df)
    assert m['n_questions'] == 5
    assert list(m['by_type']) == ['presence', 'view', 'difference']
    assert m['by_type']['difference']['n'] == 3 and m['headline_type'] == 'difference'
    sub = df[df.question_type == 'difference']
    direct = caption_metrics(sub['prediction'].fillna('').tolist(), sub['answer'].tolist())
    for k in CAPTION_METRICS: assert m['headline'][k] == pytest.approx(direct[k], abs=1e-12)
    assert (m['closed']['n'], m['closed']['accuracy']) == (2, .5)
    assert m['overall']['exact_match'] == pytest.approx(2 / 5)
    assert m['difference_findings']['n'] == 3 and m['difference_findings']['n_unparseable'] == 1
    with pytest.raises(DiffVQAError, match='missing column'): evaluate_predictions(df.drop(columns='answer'))
    with pytest.raises(DiffVQAError, match='no questions'): evaluate_predictions(df.iloc[:0])


def test_image_controls_table():
    df = _table()
    ctl = {'image_control': evaluate_predictions(df.assign(prediction=['nothing has changed.', REFS[1], 'yes', 'AP view', 'nothing has changed.'])),
           'question_only': evaluate_predictions(df.assign(prediction='nothing has changed.'))}
    m = evaluate_predictions(df) | ctl | {'baseline': baseline_metrics(df.assign(split='train'), df)}
    md = metrics_markdown(m)
    table = md[md.index('## Image control'):].split('\n\n')[2].splitlines()
    assert table[0] == ('| answered with | n | presence: exact match | view: exact match | difference: exact match | '
                        'closed: accuracy | difference: finding F1 | difference: CIDEr |')
    rows = [r.split(' | ') for r in table[2:]]
    assert [r[0] for r in rows] == ['| own films (the model)', "| another pair's films (image control)",
                                    '| blank films (question only)', '| most frequent answer per type (baseline)']
    # n, exact match presence / view / difference, closed accuracy, finding F1 (model: TP 3, FN 1 -> 6/7)
    assert [r[1:7] for r in rows[:3]] == [['5', '1.000', '0.000', '0.333', '0.500', '0.857'],
                                          ['5', '1.000', '0.000', '0.667', '0.500', '0.857'],  # misses pneumothorax, gets REFS[1]
                                          ['5', '0.000', '0.000', '0.333', '0.000', '0.000']]
    assert 'Image control' not in metrics_markdown(evaluate_predictions(df))  # no controls, no table


def test_majority_baseline_fits_train_only():
    train = pd.DataFrame({'question_type': ['view', 'view', 'view', 'presence', 'presence', 'presence', 'presence'],
                          'answer': ['AP view', 'PA view', 'AP view', 'yes', 'no', 'no', 'yes'],
                          'split': ['train', 'train', 'train', 'train', 'train', 'test', 'test']})
    base = fit_majority_baseline(train)
    assert base == {'presence': 'no', 'view': 'AP view', '*': 'AP view'}  # test rows ignored; tie broken alphabetically
    df = _table()
    assert majority_baseline_predictions(base, df) == ['AP view', 'AP view', 'no', 'AP view', 'AP view']
    bm = baseline_metrics(train, df)
    assert bm['closed']['accuracy'] == 0. and bm['answers'] == base
    with pytest.raises(DiffVQAError, match='no training'): fit_majority_baseline(train.assign(split='test'))


def test_write_metrics_files(tmp_path):
    df = _table()
    m = evaluate_predictions(df)
    m['localisation'] = localisation_metrics([np.ones((2, 2))], [np.eye(2, dtype=bool)])
    m['data'] = 'a test table'
    paths = write_metrics(tmp_path / 'out', m, df)
    back = json.loads(paths['json'].read_text())  # strict JSON: NaN became null
    assert back['by_type']['difference']['n'] == 3
    assert back['difference_findings']['no_change']['precision'] is None
    csv = pd.read_csv(paths['csv'])
    assert len(csv) == 5 and csv['row'].tolist() == list(range(5)) and csv['study_id'].tolist() == [7, 7, 8, 8, 9]
    md = paths['md'].read_text()
    assert 'NOT comparable' in md and '| ReAl | .710 |' in md and 'a test table' in md and 'Mask localisation' in md
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['metrics.json', 'metrics.md', 'predictions.csv']


@pytest.fixture(scope='module')
def short_model(tmp_path_factory):
    "A random tiny model that reads at most 6 question tokens, and a small prepared fake release."
    import dataclasses
    from diffvqa.core import get_preset
    from diffvqa.data import prepare
    from diffvqa.loaders import get_tokenizer
    from diffvqa.testing import make_fake_mimic
    from diffvqa.model import DiffVQA
    d = tmp_path_factory.mktemp('short')
    make_fake_mimic(d / 'mimic', n_subjects=4, traps=False)
    cfg = get_preset('tiny').model
    cache = prepare(d / 'mimic', d / 'cache', size=cfg.image_size, progress=False)
    tok = get_tokenizer(cache, cfg)
    DiffVQA.from_preset(dataclasses.replace(cfg, max_question_len=6), tokenizer=tok).save_pretrained(d / 'model')
    return d, tok


def test_long_questions_boundary(short_model):
    _, tok = short_model
    q = 'what has changed compared to the reference image?'
    n = len(tok([q], add_special_tokens=False)['input_ids'][0])
    assert n > 6
    assert long_questions(tok, [q, q], n).tolist() == [False, False]
    assert long_questions(tok, [q, 'is there edema?', q], n - 1).tolist() == [True, False, True]


def test_evaluate_has_three_rows_and_reports_cut_questions(short_model, capsys):
    from diffvqa.cli import main
    d, _ = short_model
    args = ['evaluate', '--run', str(d / 'model'), '--data', str(d / 'cache'), '--split', 'train',
            '--question-types', 'difference', '--limit', '4', '--device', 'cpu', '--bs', '4']
    assert main(args + ['--out', str(d / 'ev')]) == 0
    out, err = capsys.readouterr()
    warn = [l for l in err.splitlines() if l.startswith('warning')]
    assert warn == ["warning: 4 of 4 questions are longer than the model's max_question_len=6 tokens; only their first 6 "
                    'tokens were read (rows marked question_truncated in predictions.csv)']
    assert "another pair's films (image control): exact match" in out and 'blank films (question only)' in out
    m = json.loads((d / 'ev' / 'metrics.json').read_text())
    assert [m[k]['n_questions'] for k in ('image_control', 'question_only', 'baseline')] == [4, 4, 4] and m['n_questions'] == 4
    assert m['questions_truncated'] == {'n': 4, 'of': 4, 'max_question_len': 6}
    assert m['run']['image_control'] and m['run']['question_only']
    md = (d / 'ev' / 'metrics.md').read_text()
    for row in ('own films (the model)', "another pair's films (image control)", 'blank films (question only)',
                'most frequent answer per type (baseline)'):
        assert f'| {row} | 4 |' in md
    csv = pd.read_csv(d / 'ev' / 'predictions.csv')
    assert len(csv) == 4 and csv.question_truncated.all()
    assert {'prediction_other_images', 'prediction_blank_images'} <= set(csv.columns)
    assert main(args + ['--out', str(d / 'fast'), '--no-image-control', '--no-question-only']) == 0
    m = json.loads((d / 'fast' / 'metrics.json').read_text())
    assert 'image_control' not in m and 'question_only' not in m and m['n_questions'] == 4
    assert 'Image control' not in (d / 'fast' / 'metrics.md').read_text()


def test_one_pair_split_skips_the_image_control(short_model, tmp_path, capsys):
    import shutil
    from diffvqa.cli import main
    d, _ = short_model
    shutil.copytree(d / 'cache', tmp_path / 'cache')
    q = pd.read_csv(tmp_path / 'cache' / 'questions.csv', keep_default_na=False)
    first = q[q.split == 'val'].iloc[0]
    q = q[(q.split != 'val') | ((q.study_id == first.study_id) & (q.ref_id == first.ref_id))]
    q.to_csv(tmp_path / 'cache' / 'questions.csv', index=False)
    n = int(((q.split == 'val') & (q.question_type == 'difference')).sum())
    assert main(['evaluate', '--run', str(d / 'model'), '--data', str(tmp_path / 'cache'), '--split', 'val',
                 '--question-types', 'difference', '--device', 'cpu', '--out', str(tmp_path / 'ev')]) == 0
    warn = [l for l in capsys.readouterr().err.splitlines() if l.startswith('warning: image control')]
    assert warn == ["warning: image control skipped: split val has 1 image pair; another pair's films need two"]
    m = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
    assert 'image_control' not in m and m['question_only']['n_questions'] == m['n_questions'] == n
    assert 'Image control skipped: split val has 1 image pair' in (tmp_path / 'ev' / 'metrics.md').read_text()


def test_blank_images_are_all_zero(short_model, monkeypatch):
    "The question-only control feeds both films as zeros; the image control feeds another pair's films."
    import torch
    from diffvqa.data import PairCache
    from diffvqa.evaluate import generate_answers
    from diffvqa.predict import load_model
    d, _ = short_model
    model, _ = load_model(d / 'model', device='cpu')
    seen = []
    real = model.generate
    monkeypatch.setattr(model, 'generate', lambda main, ref, *a, **k: seen.append((main.clone(), ref.clone())) or real(main, ref, *a, **k))
    cache = PairCache(d / 'cache')
    for images in ('own', 'other', 'blank'): generate_answers(model, cache, 'train', limit=2, bs=2, progress=False, images=images)
    (own_m, own_r), (oth_m, oth_r), (bl_m, bl_r) = seen
    assert own_m.abs().sum() > 0 and not torch.equal(own_m, oth_m) and not torch.equal(own_r, oth_r)
    assert bl_m.abs().sum() == 0 and bl_r.abs().sum() == 0 and bl_m.shape == own_m.shape
    with pytest.raises(DiffVQAError, match='images: expected one of'):
        generate_answers(model, cache, 'train', limit=2, progress=False, images='grey')


def test_import_is_light():
    code = 'import sys, diffvqa.evaluate; sys.exit("pycocoevalcap" in sys.modules)'
    assert subprocess.run([sys.executable, '-c', code], timeout=120).returncode == 0


def test_close_meteor_stops_the_process():  # last: the next METEOR user starts a fresh one
    p = meteor_scorer().meteor_p
    close_meteor()
    assert p.poll() is not None
    close_meteor()  # closing twice is harmless


def test_java_tokenizer_progress_line_is_dropped():
    "pycocoevalcap's Java PTB tokenizer prints a progress line on every call; it does not reach the user's stderr."
    code = 'import warnings; warnings.simplefilter("ignore"); from diffvqa.metrics import ptb_tokenize; print(ptb_tokenize(["Hello, World."]))'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "['hello world']" in r.stdout, r.stderr[-500:]
    assert 'PTBTokenizer tokenized' not in r.stderr, r.stderr[-500:]


def test_decoder_answers_scored_beside_the_written_ones():
    "With a prediction_decoder column, its difference rows get their own finding F1, and learning_summary shows it beside the control."
    from diffvqa.evaluate import decoder_difference
    from diffvqa.metrics import learning_summary
    add = lambda f: f'the main image has an additional finding of {f} than the reference image.'
    df = pd.DataFrame(dict(question_type=['difference', 'difference', 'view'], answer=[add('edema'), add('pneumonia'), 'PA view'],
                           prediction=[add('edema'), add('pneumonia'), 'PA view'],
                           prediction_decoder=[add('edema'), add('fracture'), 'AP view']))
    d = decoder_difference(df)
    assert (d['all']['tp'], d['all']['fp'], d['all']['fn']) == (1, 1, 1) and d['all']['f1'] == pytest.approx(0.5)
    assert decoder_difference(df.drop(columns='prediction_decoder')) is None and decoder_difference(df[df.question_type == 'view']) is None
    s = learning_summary({'difference_findings': {'all': {'f1': 1.0}}, 'decoder_difference': d,
                          'image_control': {'difference_findings': {'all': {'f1': 0.0}}, 'decoder_difference': {'all': {'f1': 0.25}}}})
    assert s['difference_f1'] == {'own': 1.0, 'other': 0.0, 'blank': pytest.approx(float('nan'), nan_ok=True)}
    assert s['difference_f1_decoder']['own'] == pytest.approx(0.5) and s['difference_f1_decoder']['other'] == 0.25
    assert 'difference_f1_decoder' not in learning_summary({'difference_findings': {'all': {'f1': 1.0}}})
