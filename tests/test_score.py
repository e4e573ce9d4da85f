"`diffvqa score` through the CLI: hand-computed metrics, keys (qid and study/ref/question), one-line errors."
import json

import pandas as pd
import pytest

from diffvqa.cli import main
from diffvqa.templates import difference_answer

D = 'what has changed compared to the reference image?'
PNX = difference_answer(['pneumothorax'])
# release layout, qid = row number; study 10 has four questions about the same pair
RELEASE = pd.DataFrame([
    (10, 1, 5, 'difference', D, PNX, 'test'),                                  # qid 0
    (10, 1, 5, 'presence', 'is there edema?', 'yes', 'test'),                  # qid 1
    (10, 1, 5, 'presence', 'is there pneumothorax?', 'yes', 'test'),           # qid 2
    (10, 1, 5, 'view', 'which view is this image taken?', 'PA view', 'test'),  # qid 3
    (11, 2, 6, 'difference', D, 'nothing has changed.', 'test'),               # qid 4
    (11, 2, 6, 'presence', 'is there edema?', 'no', 'test'),                   # qid 5
    (12, 3, 7, 'presence', 'is there edema?', 'no', 'train'),                  # qid 6
    (12, 3, 7, 'difference', D, 'nothing has changed.', 'train'),              # qid 7
    (13, 4, 8, 'difference', D, 'nothing has changed.', 'val'),                # qid 8
    (13, 4, 8, 'presence', 'is there edema?', 'yes', 'val')],                  # qid 9
    columns=['study_id', 'subject_id', 'ref_id', 'question_type', 'question', 'answer', 'split'])
# test split: right, right ('Yes' normalises to 'yes'), wrong, right, wrong (edema where nothing changed), right
ANSWERS = [PNX, 'Yes', 'no', 'PA view', difference_answer(['edema']), 'no']


@pytest.fixture
def files(tmp_path):
    RELEASE.to_csv(tmp_path / 'mimic_pair_questions.csv', index=False)
    pd.DataFrame({'qid': range(6), 'prediction': ANSWERS}).to_csv(tmp_path / 'pred.csv', index=False)
    return tmp_path


def score(d, pred='pred.csv', *extra):
    return main(['score', '--predictions', str(d / pred), '--questions', str(d / 'mimic_pair_questions.csv'), *map(str, extra)])


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: '), err
    for n in needles: assert n in err, err
    return err


def check_hand_values(m):
    assert m['n_questions'] == 6
    assert m['overall']['exact_match'] == pytest.approx(4 / 6)
    assert {t: v['n'] for t, v in m['by_type'].items()} == {'presence': 3, 'view': 1, 'difference': 2}
    assert m['by_type']['presence']['exact_match'] == pytest.approx(2 / 3)
    assert (m['closed']['n'], m['closed']['accuracy']) == (4, pytest.approx(3 / 4))
    f = m['difference_findings']
    assert [f['all'][k] for k in ('tp', 'fp', 'fn')] == [1, 1, 0] and f['all']['f1'] == pytest.approx(2 / 3)
    assert f['no_change']['fn'] == 1


def test_score_by_qid_hand_values(files, capsys):
    assert score(files) == 0
    out = capsys.readouterr().out
    assert 'scored 6 questions (split test)' in out
    m = json.loads((files / 'pred-score' / 'metrics.json').read_text())
    check_hand_values(m)
    assert m['score']['key'] == 'qid' and m['score']['n_missing'] == 0
    # baseline fitted on the train rows only: presence 'no', difference 'nothing has changed.', '*' 'no' (tie, alphabetical)
    assert m['baseline']['answers'] == {'difference': 'nothing has changed.', 'presence': 'no', '*': 'no'}
    assert m['baseline']['overall']['exact_match'] == pytest.approx(2 / 6)
    assert 'predictions (pred.csv)' in (files / 'pred-score' / 'metrics.md').read_text()


def test_several_questions_per_study_all_scored_by_triple_key(files, capsys):
    triple = RELEASE.iloc[:6][['study_id', 'ref_id', 'question']].assign(prediction=ANSWERS)
    triple['question'] = triple['question'].str.upper() + '  '  # case and spacing do not matter
    triple.to_csv(files / 'triple.csv', index=False)
    assert score(files, 'triple.csv', '--out', files / 'tri') == 0
    m = json.loads((files / 'tri' / 'metrics.json').read_text())
    check_hand_values(m)
    assert m['score']['key'] == 'triple'
    scored = pd.read_csv(files / 'tri' / 'predictions.csv')
    assert (scored.study_id == 10).sum() == 4  # every question of study 10, not one per study
    assert scored.qid.tolist() == list(range(6))


def test_missing_rows_one_line(files, capsys):
    pd.DataFrame({'qid': [0, 1, 2, 3], 'prediction': ANSWERS[:4]}).to_csv(files / 'short.csv', index=False)
    assert score(files, 'short.csv') == 2
    one_line_error(capsys, '2 question(s) of split test have no prediction', 'first: qid 4, qid 5', '--allow-missing')
    assert not (files / 'short-score').exists()


def test_duplicate_rows_one_line(files, capsys):
    pd.DataFrame({'qid': [0, 1, 2, 3, 4, 5, 2, 2, 5], 'prediction': ANSWERS + ['yes'] * 3}).to_csv(files / 'dup.csv', index=False)
    assert score(files, 'dup.csv') == 2
    one_line_error(capsys, '2 question(s) have more than one prediction row', 'first: qid 2, qid 5')
    assert not (files / 'dup-score').exists()


def test_unknown_rows_one_line(files, capsys):
    pd.DataFrame({'qid': [0, 1, 2, 3, 4, 5, 99, 10], 'prediction': ANSWERS + ['no', 'no']}).to_csv(files / 'unk.csv', index=False)
    assert score(files, 'unk.csv') == 2
    one_line_error(capsys, '2 prediction row(s) match no question', 'first: qid 99, qid 10')
    tri = RELEASE.iloc[:6][['study_id', 'ref_id', 'question']].assign(prediction=ANSWERS)
    tri.loc[5, 'study_id'] = 77
    tri.to_csv(files / 'unk3.csv', index=False)
    assert score(files, 'unk3.csv') == 2
    one_line_error(capsys, '1 prediction row(s) match no question', "(study_id 77, ref_id 6, 'is there edema?')")
    assert not (files / 'unk-score').exists() and not (files / 'unk3-score').exists()


def test_qid_from_another_file_is_caught(files, capsys):
    ids = RELEASE.iloc[:6][['study_id', 'ref_id']].reset_index(drop=True)
    ids.loc[3, 'study_id'] = 11
    pd.DataFrame({'qid': range(6), 'prediction': ANSWERS}).join(ids).to_csv(files / 'mix.csv', index=False)
    assert score(files, 'mix.csv') == 2
    one_line_error(capsys, '1 row(s) give another study_id/ref_id', 'qid 3')


def test_allow_missing_scores_empty_answers(files, capsys):
    pd.DataFrame({'qid': [0, 1, 2, 3, 4], 'prediction': ANSWERS[:5]}).to_csv(files / 'short.csv', index=False)
    assert score(files, 'short.csv', '--allow-missing') == 0
    err = capsys.readouterr().err
    assert [l for l in err.splitlines() if l.startswith('warning:')] == [
        f'warning: 1 question(s) of split test have no prediction in {files / "short.csv"}; scored as empty answers (--allow-missing)']
    m = json.loads((files / 'short-score' / 'metrics.json').read_text())
    assert (m['n_questions'], m['score']['n_missing']) == (6, 1)
    assert m['overall']['exact_match'] == pytest.approx(3 / 6)  # qid 5 was right in the full file, now it counts as wrong


def test_split_and_question_types_are_chosen(files, capsys):
    pd.DataFrame({'qid': [8, 9, 0], 'prediction': ['nothing has changed.', 'no', PNX]}).to_csv(files / 'val.csv', index=False)
    assert score(files, 'val.csv', '--split', 'val') == 0
    assert 'scored 2 questions (split val); 1 prediction row(s) outside it not scored' in capsys.readouterr().out
    m = json.loads((files / 'val-score' / 'metrics.json').read_text())
    assert m['overall']['exact_match'] == pytest.approx(1 / 2) and m['score']['n_not_scored'] == 1
    pd.DataFrame({'qid': [0, 4], 'prediction': [PNX, 'nothing has changed.']}).to_csv(files / 'diff.csv', index=False)
    assert score(files, 'diff.csv', '--question-types', 'difference') == 0
    m = json.loads((files / 'diff-score' / 'metrics.json').read_text())
    assert list(m['by_type']) == ['difference'] and m['headline']['exact_match'] == 1.0
    assert score(files, 'diff.csv') == 2  # all types by default: the presence and view questions are missing
    one_line_error(capsys, '4 question(s) of split test have no prediction')


def test_without_questions_the_file_carries_references(files, capsys):
    own = RELEASE.iloc[:8].assign(prediction=ANSWERS + ['no', 'no']).reset_index().rename(columns={'index': 'qid'})
    own.to_csv(files / 'own.csv', index=False)
    assert main(['score', '--predictions', str(files / 'own.csv')]) == 0  # split test by default (2 train rows left out)
    check_hand_values(json.loads((files / 'own-score' / 'metrics.json').read_text()))
    own.drop(columns='answer').to_csv(files / 'noref.csv', index=False)
    assert main(['score', '--predictions', str(files / 'noref.csv')]) == 2
    one_line_error(capsys, "must carry the columns ['answer']")


def test_cache_questions_file_keeps_its_qids(files, capsys):
    cache_q = RELEASE.reset_index().rename(columns={'index': 'qid'}).drop(index=2)  # prepare dropped qid 2 (missing image)
    cache_q.to_csv(files / 'questions.csv', index=False)
    keep = [0, 1, 3, 4, 5]
    pd.DataFrame({'qid': keep, 'prediction': [ANSWERS[i] for i in keep]}).to_csv(files / 'c.csv', index=False)
    assert main(['score', '--predictions', str(files / 'c.csv'), '--questions', str(files / 'questions.csv')]) == 0
    m = json.loads((files / 'c-score' / 'metrics.json').read_text())
    assert m['n_questions'] == 5 and m['overall']['exact_match'] == pytest.approx(4 / 5)


def test_bad_files_one_line(files, capsys):
    pd.DataFrame({'study_id': [10], 'prediction': ['yes']}).to_csv(files / 'nokey.csv', index=False)
    assert score(files, 'nokey.csv') == 2
    one_line_error(capsys, 'no question key')
    assert score(files, 'nope.csv') == 2
    one_line_error(capsys, 'nope.csv: predictions file not found')
    (files / 'predictions.csv').write_text((files / 'pred.csv').read_text())
    assert score(files, 'predictions.csv', '--out', files) == 2  # the scored table would overwrite the input
    one_line_error(capsys, 'would overwrite the predictions file')
    assert (files / 'predictions.csv').read_text() == (files / 'pred.csv').read_text()
