"Training: λ schedule, two-stage freezing, per-term metrics, checkpoints, SIGKILL + resume bit-identical, no test split."
import argparse
import csv
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffvqa.core import DiffVQAError, get_preset
from diffvqa.losses import LOSS_TERMS
from diffvqa.testing import fast_caption_scores as fast_scores, small_config as tiny_config
from diffvqa.checkpoint import find_checkpoint, load_checkpoint
from diffvqa.train import add_train_args, run_train, train

# A tiny run (diffvqa.testing.small_config): 64 px images, 8 training questions in batches of 4, 1 frozen + 1 unfrozen
# epoch, scored without Java.
N_TRAIN = 8


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    from diffvqa.data import prepare
    from diffvqa.testing import make_fake_mimic
    root = tmp_path_factory.mktemp('fake')
    fm = make_fake_mimic(root/'tree', n_subjects=10, traps=False, seed=0)
    return prepare(fm.root, root/'cache', size=64, progress=False)


class Snapshot:
    "Copies of the image-encoder and decoder weights at the start and after each epoch."
    def __init__(self): self.enc, self.dec = [], []
    def grab(self, model):
        self.enc.append({k: v.detach().clone() for k, v in model.image_encoder.state_dict().items()})
        self.dec.append({k: v.detach().clone() for k, v in model.decoder.state_dict().items()})


@pytest.fixture(scope='module')
def ref_run(cache, tmp_path_factory):
    "One uninterrupted run, in process, recording encoder weights per epoch and which splits/images were read."
    from fastai.callback.core import Callback
    from diffvqa import data
    snap, splits, rows = Snapshot(), [], set()
    class Grab(Callback):
        def before_fit(self): snap.grab(self.learn.model)
        def after_epoch(self): snap.grab(self.learn.model)
    select, image = data.PairCache.select, data.PairCache.image
    def rec_select(self, split=None, question_types=None):
        splits.append(split); return select(self, split, question_types)
    def rec_image(self, row):
        rows.add(int(row)); return image(self, row)
    mp = pytest.MonkeyPatch()
    mp.setattr(data.PairCache, 'select', rec_select)
    mp.setattr(data.PairCache, 'image', rec_image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = tmp_path_factory.mktemp('runs')/'ref'
        res = train(cache, run, config=tiny_config(), max_train_questions=N_TRAIN, scorer=fast_scores,
                    cbs=[Grab()], progress=False, verbose=False)
    finally:
        torch.set_num_threads(threads); mp.undo()
    return dict(run=run, res=res, snap=snap, splits=splits, rows=rows)


def test_two_stage_freezing(ref_run):
    enc, dec = ref_run['snap'].enc, ref_run['snap'].dec
    assert len(enc) == 3   # start, after stage 1, after stage 2
    for k in enc[0]:
        assert torch.equal(enc[0][k], enc[1][k]), f'image encoder {k} moved while frozen'
    moved = [k for k in enc[1] if enc[1][k].is_floating_point() and not torch.equal(enc[1][k], enc[2][k])]
    assert len(moved) > len(enc[1]) // 2, 'stage 2 did not train the image encoder'
    assert any(not torch.equal(dec[0][k], dec[1][k]) for k in dec[0]), 'the decoder did not train in stage 1'


def _rows(run):
    with open(Path(run)/'metrics.csv', newline='') as f: return list(csv.DictReader(f))


def test_metrics_columns(ref_run):
    rows = _rows(ref_run['run'])
    assert [r['epoch'] for r in rows] == ['1', '2'] and [r['stage'] for r in rows] == ['1', '2']
    for ph in ('train', 'valid'):
        for t in ('loss', *LOSS_TERMS):
            assert f'{ph}_{t}' in rows[0], f'{ph}_{t} missing'
            assert math.isfinite(float(rows[0][f'{ph}_{t}']))
    for c in ('cider', 'bleu1', 'meteor', 'rouge_l', 'best_cider', 'lambda', 'lr', 'epoch_time_s'):
        assert c in rows[0]
    # λ after each epoch: progress 1/2 and 2/2 of the run (the tiny preset's cosine from 1 to 0.8)
    assert math.isclose(float(rows[0]['lambda']), 0.9, abs_tol=1e-6)
    assert math.isclose(float(rows[1]['lambda']), 0.8, abs_tol=1e-6)
    # the weighted sum of the logged terms is the logged total (the paper's weights, plus tiny's answer-structure term)
    w = dict(lm=1, reg=1, mask_main=.1, mask_ref=.1, pred_main=.1, pred_ref=.1, gram=.1, gram_mask=.1, koleo=.001, changes=1.)
    total = sum(w[t] * float(rows[0][f'train_{t}']) for t in LOSS_TERMS)
    assert math.isclose(total, float(rows[0]['train_loss']), rel_tol=1e-4)


def test_run_dir_contents(ref_run):
    from diffvqa.model import DiffVQA
    run, res = ref_run['run'], ref_run['res']
    for f in ('config.json', 'versions.json', 'seed.txt', 'run.json', 'metrics.csv', 'curves.png', 'tokenizer/tokenizer.json'):
        assert (run/f).is_file(), f
    assert (run/'seed.txt').read_text().strip() == '42'
    assert res.epochs_done == 2 and res.best_dir == run/'best'
    best = json.loads((run/'best'/'best.json').read_text())
    assert best['epoch'] == res.best_epoch and math.isclose(best['cider'], res.best_cider)
    m = DiffVQA.from_pretrained(run/'best')
    assert m.config.image_size == 64
    assert not list(run.glob('**/*.pt')) and not list(run.glob('**/*.pkl')) and not list(run.glob('**/*.pth'))


def test_checkpoint_round_trip(ref_run):
    from diffvqa.model import DiffVQA
    from diffvqa.tokenizer import load_tokenizer
    run = ref_run['run']
    ck = find_checkpoint(run/'checkpoints'/'last')
    state = json.loads((ck/'state.json').read_text())
    assert state['epochs_done'] == 2 and state['progress'] == 1.0 and math.isclose(state['lambda'], 0.8, abs_tol=1e-6)
    assert len(state['history']) == 2
    model = DiffVQA(tiny_config().model, load_tokenizer(run/'tokenizer'))
    enc = {id(p) for p in model.image_encoder.parameters()}   # the trainer's two groups: φ, then the rest
    groups = [[p for p in model.parameters() if id(p) in enc], [p for p in model.parameters() if id(p) not in enc]]
    opt = torch.optim.AdamW([dict(params=g) for g in groups], lr=1.0)
    load_checkpoint(ck, model, opt, restore_rng=False)
    saved = load_file(str(ck/'model.safetensors'))
    sd = model.state_dict()
    for k, v in saved.items(): assert torch.equal(sd[k], v), k
    opt_saved = load_file(str(ck/'optimizer.safetensors'))
    st = opt.state_dict()['state']
    for k, v in opt_saved.items():
        _, pid, name = k.split('.', 2)
        assert torch.equal(st[int(pid)][name], v), k
    assert opt.param_groups[1]['lr'] == tiny_config().train.lr


def test_test_split_never_read(ref_run, cache):
    from diffvqa.data import PairCache
    assert 'test' not in ref_run['splits'] and None not in ref_run['splits']
    q = PairCache(cache).questions
    test_rows = set(q[q.split == 'test'].main_row) | set(q[q.split == 'test'].ref_row)
    other = set(q[q.split != 'test'].main_row) | set(q[q.split != 'test'].ref_row)
    assert test_rows - other, 'fixture has no test-only images'
    assert ref_run['rows'], 'no image reads were recorded'
    assert not (ref_run['rows'] & (test_rows - other)), 'training read a test-split image'


SCRIPT = textwrap.dedent('''
    import sys, time, torch
    from diffvqa.testing import fast_caption_scores as fast_scores, small_config as tiny_config
    from pathlib import Path
    from fastai.callback.core import Callback
    from diffvqa.train import train
    torch.set_num_threads(1)
    cache, run, marker, mode = sys.argv[1:5]
    class Slow(Callback):
        "After each optimiser step of the second epoch: mark it and slow down, so the kill lands mid-epoch."
        def after_batch(self):
            if self.training and self.learn.epoch_offset + self.epoch >= 1:
                Path(marker).touch(); time.sleep(2.0)
    if mode == 'start':
        train(cache, run, config=tiny_config(), max_train_questions=%d, scorer=fast_scores, cbs=[Slow()], progress=False)
    else:
        train(resume=run, scorer=fast_scores, progress=False)
    ''' % N_TRAIN)


def _tensors_equal(a, b):
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sigkill_then_resume_is_bit_identical(ref_run, cache, tmp_path):
    run, marker = tmp_path/'killed', tmp_path/'epoch2-started'
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', MPLBACKEND='Agg', PYTHONHASHSEED='0')
    p = subprocess.Popen([sys.executable, '-c', SCRIPT, str(cache), str(run), str(marker), 'start'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not marker.exists() and p.poll() is None and time.time() - t0 < 400: time.sleep(0.05)
    assert p.poll() is None, p.stdout.read().decode()[-3000:]
    assert marker.exists(), 'second epoch never took a step'
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    state = json.loads((run/'checkpoints'/'last'/'state.json').read_text())
    assert state['epochs_done'] == 1   # killed inside epoch 2, after its first step
    assert len(_rows(run)) == 1
    r = subprocess.run([sys.executable, '-c', SCRIPT, str(cache), str(run), str(marker), 'resume'], env=env,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ref = ref_run['run']
    a, b = run/'checkpoints'/'last', ref/'checkpoints'/'last'
    assert json.loads((a/'state.json').read_text())['epochs_done'] == 2
    assert _tensors_equal(a/'model.safetensors', b/'model.safetensors'), 'final weights differ from the uninterrupted run'
    assert hashlib.sha256((a/'model.safetensors').read_bytes()).digest() == hashlib.sha256((b/'model.safetensors').read_bytes()).digest()
    assert _tensors_equal(a/'optimizer.safetensors', b/'optimizer.safetensors'), 'optimizer state differs'
    drop = lambda rows: [{k: v for k, v in row.items() if k != 'epoch_time_s'} for row in rows]
    assert drop(_rows(run)) == drop(_rows(ref))
    assert _tensors_equal(run/'best'/'model.safetensors', ref/'best'/'model.safetensors')


def test_resume_of_finished_run_does_nothing(ref_run):
    before = (ref_run['run']/'checkpoints'/'last'/'state.json').read_bytes()
    res = train(resume=ref_run['run'], scorer=fast_scores, progress=False, verbose=False)
    assert res.epochs_done == 2 and res.resumed_from == 2
    assert (ref_run['run']/'checkpoints'/'last'/'state.json').read_bytes() == before


def _args(*argv):
    p = argparse.ArgumentParser(); add_train_args(p); return p.parse_args(list(argv))


def test_cli_errors(cache, ref_run, tmp_path):
    cases = [
        ((), '--data/--out'),
        (('--data', str(tmp_path/'nope'), '--out', str(tmp_path/'r1')), 'nope'),
        (('--data', str(cache), '--out', str(tmp_path/'r2'), '--bs', '0'), '--bs'),
        (('--data', str(cache), '--out', str(tmp_path/'r3'), '--question-types', 'colour'), '--question-types'),
        (('--data', str(cache), '--out', str(tmp_path/'r4'), '--preset', 'huge'), '--preset'),
        (('--data', str(cache), '--out', str(tmp_path/'r5'), '--epochs-frozen', '0', '--epochs-unfrozen', '0'), 'no epochs'),
        (('--data', str(cache), '--out', str(ref_run['run'])), 'not empty'),
        (('--resume', str(tmp_path)), 'not a training run'),
        (('--resume', str(ref_run['run']), '--bs', '3'), 'keeps its configuration'),
    ]
    for argv, msg in cases:
        with pytest.raises(DiffVQAError, match=msg.replace('-', r'\-')) as e:
            run_train(_args(*argv))
        assert '\n' not in str(e.value)
    (tmp_path/'stuff').mkdir(); (tmp_path/'stuff'/'x.txt').write_text('mine')
    with pytest.raises(DiffVQAError, match='not one'):
        run_train(_args('--data', str(cache), '--out', str(tmp_path/'stuff'), '--overwrite'))
    assert (tmp_path/'stuff'/'x.txt').read_text() == 'mine'


def test_diffvqa_train_command_reports_one_line(tmp_path, capsys):
    from diffvqa.cli import main
    assert main(['train', '--data', str(tmp_path/'no-cache'), '--out', str(tmp_path/'run')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'no-cache' in err and '\n' not in err
    assert not (tmp_path/'run').exists()


def test_bad_model_setting_is_one_line(cache, tmp_path):
    "A mask head without outputs is refused before anything is written."
    cfg = get_preset('tiny'); cfg.model.mask_channels = 0
    with pytest.raises(DiffVQAError, match='mask_channels: must be an integer >= 1, got 0') as e:
        train(cache, tmp_path/'run', config=cfg, progress=False, verbose=False)
    assert '\n' not in str(e.value) and not (tmp_path/'run').exists()
