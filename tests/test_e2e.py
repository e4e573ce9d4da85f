"A miniature of `make demo` through the command line, then `evaluate` and `predict` on the run it trained."
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, '-c', 'import sys; from diffvqa.cli import main; sys.exit(main())', *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo')
    r = cli('demo', '--out', out, '--n-pairs', 16, '--pretrain-epochs', 1, '--epochs-frozen', 1, '--epochs-unfrozen', 1,
            '--max-train-questions', 48, '--val-subset', 8, '--test-limit', 16, '--workers', 1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'report: {(out / "report.md").resolve()}' in r.stdout
    return out


def test_demo_writes_report_and_artifacts(demo_dir):
    report = (demo_dir / 'report.md').read_text()
    for needle in ('Headline: difference questions', 'most-frequent-answer baseline', 'figures/training_curves.png',
                   'figures/metrics_by_type.png', 'Published results'):
        assert needle in report
    for rel in report.split('(figures/')[1:]:
        assert (demo_dir / 'figures' / rel.split(')')[0]).is_file()
    m = json.loads((demo_dir / 'eval' / 'metrics.json').read_text())
    assert m['headline_type'] == 'difference' and 0 <= m['headline']['CIDEr']
    assert 'localisation' in m and m['localisation']['n_pairs'] >= 1  # synthetic data carries change masks
    runs = pd.read_csv(demo_dir / 'run' / 'metrics.csv')
    assert list(runs.stage.unique()) == [1, 2]  # both training stages ran
    assert (demo_dir / 'run' / 'best' / 'model.safetensors').is_file()


def test_evaluate_command(demo_dir, tmp_path):
    out = tmp_path / 'scores.json'
    r = cli('evaluate', '--run', demo_dir / 'run', '--data', demo_dir / 'cache', '--split', 'val',
            '--question-types', 'all', '--out', out, '--limit', 12)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(out.read_text())
    preds = pd.read_csv(tmp_path / 'predictions.csv')
    assert m['n_questions'] == len(preds) <= 12
    assert not preds.duplicated(['qid']).any()  # one row per question, never one per study
    assert (tmp_path / 'metrics.md').is_file()


def test_evaluate_bad_run_is_one_line(tmp_path, demo_dir):
    r = cli('evaluate', '--run', tmp_path / 'nope', '--data', demo_dir / 'cache')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'nope' in r.stderr


def test_predict_command(demo_dir, tmp_path):
    q = pd.read_csv(demo_dir / 'data' / 'mimic_pair_questions.csv')
    row = q[q.question_type == 'difference'].iloc[0]
    find = lambda s: next((demo_dir / 'data' / 'files').glob(f'p*/p{row.subject_id}/s{s}/*.jpg'))
    r = cli('predict', '--run', demo_dir / 'run', '--main', find(row.study_id), '--ref', find(row.ref_id),
            '--question', row.question, '--out', tmp_path / 'pred')
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((tmp_path / 'pred' / 'answer.json').read_text())
    assert a['question'] == row.question
    assert a['answer'].strip() in r.stdout
    assert (tmp_path / 'pred' / 'overlay.png').stat().st_size > 0
