"""Synthetic benchmark: release schema, question types, answer/ground-truth round trip, masks, determinism, bad input."""
import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffvqa.core import DiffVQAError
from diffvqa.synth import add_synth_args, change_mask_path, image_path, run_synth
from diffvqa.templates import QUESTION_TYPES, parse_difference_answer

PAIR_COLUMNS = ['study_id', 'subject_id', 'ref_id', 'question_type', 'question', 'answer', 'split']
ALL_COLUMNS = ['subject_id', 'study_id', 'Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema',
               'Enlarged Cardiomediastinum', 'Fracture', 'Lung Lesion', 'Lung Opacity', 'No Finding',
               'Pleural Effusion', 'Pleural Other', 'Pneumonia', 'Pneumothorax', 'Support Devices',
               'dicom_id', 'view', 'split', 'study_date', 'study_order']
META_COLUMNS = ['dicom_id', 'subject_id', 'study_id', 'ViewPosition', 'ViewCodeSequence_CodeMeaning', 'Rows',
                'Columns', 'StudyDate', 'StudyTime']
N_PAIRS = 60


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_synth_args(p)
    return p.parse_args(list(argv))


@pytest.fixture(scope='session')
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp('synth-cache')


@pytest.fixture(scope='session')
def dataset(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp('synth') / 'a'
    assert run_synth(_args('--out', str(out), '--n-pairs', str(N_PAIRS), '--size', '64', '--seed', '7',
                           '--cache-dir', str(cache), '--variants', '1')) == 0
    return out


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*')) if p.is_file()}


def test_schema(dataset):
    q = pd.read_csv(dataset / 'mimic_pair_questions.csv', keep_default_na=False)
    a = pd.read_csv(dataset / 'mimic_all.csv', keep_default_na=False)
    m = pd.read_csv(dataset / 'mimic-cxr-2.0.0-metadata.csv', keep_default_na=False)
    assert list(q.columns) == PAIR_COLUMNS
    assert list(a.columns) == ALL_COLUMNS
    assert list(m.columns) == META_COLUMNS
    assert set(q.split) <= {'train', 'val', 'test'} and set(q.split) == {'train', 'val', 'test'}
    # splits are by subject
    assert q.groupby('subject_id').split.nunique().max() == 1
    # exactly one difference question per pair, reference earlier than main
    d = q[q.question_type == 'difference']
    assert len(d) == N_PAIRS and not d.duplicated(['study_id', 'ref_id']).any()
    order = dict(zip(a.study_id, a.study_order))
    assert all(order[r] < order[s] for s, r in zip(d.study_id, d.ref_id))
    # every study's chosen image exists, is grayscale JPEG of the advertised size, and is frontal
    assert set(a.view) <= {'postero-anterior', 'antero-posterior'}
    meta = m.set_index('dicom_id')
    for r in a.itertuples():
        img = Image.open(image_path(dataset, r.subject_id, r.study_id, r.dicom_id))
        assert img.format == 'JPEG' and img.mode == 'L'
        assert img.size == (meta.Columns[r.dicom_id], meta.Rows[r.dicom_id])
    assert (m.ViewPosition == 'LATERAL').any()   # some studies also hold a lateral image, as in MIMIC
    assert set(m.ViewPosition) <= {'PA', 'AP', 'LATERAL'}
    view = q[(q.question_type == 'view') & (q.question == 'which view is this image taken?')]
    assert set(view.answer) <= {'PA view', 'AP view'}


def test_every_question_type(dataset):
    q = pd.read_csv(dataset / 'mimic_pair_questions.csv', keep_default_na=False)
    assert set(q.question_type) == set(QUESTION_TYPES)
    assert (q.answer != '').all()


def test_difference_round_trip_and_masks(dataset):
    q = pd.read_csv(dataset / 'mimic_pair_questions.csv', keep_default_na=False)
    d = q[q.question_type == 'difference'].set_index(['study_id', 'ref_id']).answer
    gt = [json.loads(l) for l in (dataset / 'ground_truth' / 'pairs.jsonl').read_text().splitlines()]
    assert len(gt) == N_PAIRS
    n_same = 0
    for g in gt:
        p = parse_difference_answer(d[g['study_id'], g['ref_id']], strict=True)
        assert list(p.added) == g['added'] and list(p.removed) == g['removed']
        assert [[c.finding, c.before, c.after] for c in p.level_changes] == g['level_changes']
        assert p.nothing_changed == g['nothing_changed']
        mask = np.array(Image.open(change_mask_path(dataset, g['study_id'], g['ref_id'])))
        assert mask.any() == (not g['nothing_changed']), g
        assert set(np.unique(mask)) <= {0, 255}
        n_same += g['nothing_changed']
    assert 0 < n_same < N_PAIRS / 2


def test_visits_ground_truth(dataset):
    visits = [json.loads(l) for l in (dataset / 'ground_truth' / 'visits.jsonl').read_text().splitlines()]
    a = pd.read_csv(dataset / 'mimic_all.csv', keep_default_na=False)
    assert [v['study_id'] for v in visits] == list(a.study_id)
    for v in visits:
        assert abs(v['nuisance']['rotation_deg']) <= 5 and abs(v['nuisance']['scale'] - 1) <= 0.05
        for f in v['findings']:
            assert f['site'] and f['templates'] and f['location']
            assert f['lobe'] is None or f['lobe'].endswith('lobe')
            assert f['side'] in ('left', 'right', 'bilateral', None)
            assert f['level'] is None or isinstance(f['level'], str)
    # a study's findings agree with its CheXpert labels
    lab = a.set_index('study_id')
    for v in visits:
        assert (lab['No Finding'][v['study_id']] == '1.0') == (not v['findings'])


def test_deterministic(dataset, cache, tmp_path):
    out = tmp_path / 'b'
    run_synth(_args('--out', str(out), '--n-pairs', str(N_PAIRS), '--size', '64', '--seed', '7',
                    '--cache-dir', str(cache), '--variants', '1', '--workers', '2'))
    assert _digest(out) == _digest(dataset)
    other = tmp_path / 'c'
    run_synth(_args('--out', str(other), '--n-pairs', str(N_PAIRS), '--size', '64', '--seed', '8',
                    '--cache-dir', str(cache), '--variants', '1'))
    assert (other / 'mimic_pair_questions.csv').read_bytes() != (dataset / 'mimic_pair_questions.csv').read_bytes()


@pytest.mark.parametrize('argv, flag', [
    (['--n-pairs', '0'], '--n-pairs'),
    (['--n-pairs', '3', '--size', '63'], '--size'),
    (['--n-pairs', '3', '--size', '2048'], '--size'),
    (['--n-pairs', '3', '--workers', '0'], '--workers'),
])
def test_bad_input(tmp_path, argv, flag):
    with pytest.raises(DiffVQAError, match=flag):
        run_synth(_args('--out', str(tmp_path / 'x'), *argv))
    assert not (tmp_path / 'x').exists()


def test_existing_out_needs_overwrite(dataset, cache, tmp_path):
    out = tmp_path / 'full'
    out.mkdir()
    (out / 'keep.txt').write_text('user data')
    with pytest.raises(DiffVQAError, match='--out'):
        run_synth(_args('--out', str(out), '--n-pairs', '2', '--size', '64', '--cache-dir', str(cache), '--variants', '1'))
    assert (out / 'keep.txt').read_text() == 'user data'
    assert run_synth(_args('--out', str(out), '--n-pairs', '2', '--size', '64', '--cache-dir', str(cache),
                           '--variants', '1', '--overwrite')) == 0
    assert len(pd.read_csv(out / 'mimic_pair_questions.csv').query("question_type == 'difference'")) == 2
