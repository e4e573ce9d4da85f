"""`diffvqa pretrain` from the command line: bad input is one line and a non-zero exit, and nothing is written."""
import pytest

from diffvqa.cli import main


def _err_lines(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [l for l in err if l.strip()]


@pytest.mark.parametrize('argv, says', [
    (['--data', '/nonexistent/cache'], '--data /nonexistent/cache: no such folder'),
    (['--data', '.'], 'not a prepared cache'),
    (['--data', '.', '--epochs', '-1'], 'not a prepared cache'),
])
def test_bad_input_is_one_line(argv, says, tmp_path, capsys):
    rc = main(['pretrain', *argv, '--out', str(tmp_path/'out')])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path/'out').exists()


def test_wrong_size_and_bad_setting(tmp_path, capsys):
    from diffvqa.data import prepare
    from diffvqa.testing import make_fake_mimic
    make_fake_mimic(tmp_path/'mimic', n_subjects=4, traps=False)
    cache = prepare(tmp_path/'mimic', tmp_path/'cache', size=32, progress=False)
    rc = main(['pretrain', '--data', str(cache), '--out', str(tmp_path/'out')])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and 'cached at 32px' in lines[0] and '128px' in lines[0], lines
    with pytest.raises(SystemExit) as e: main(['pretrain', '--data', str(cache), '--out', str(tmp_path/'out'), '--epochs', 'two'])
    assert e.value.code == 2 and "--epochs: invalid int value: 'two'" in capsys.readouterr().err
    assert not (tmp_path/'out').exists()


def test_mask_head_is_not_pretrained_without_boxes():
    "Real data has no boxes: no mask weights are written, and the report says why (nothing is read from the cache)."
    import numpy as np
    from diffvqa.core import PretrainConfig, get_preset
    from diffvqa.pretrain import FilmLabels, pretrain_mask
    labels = FilmLabels(['Edema'], np.zeros(3, np.int64), np.zeros((3, 1), np.float32), [[], [], []], 'chexpert')
    mask, report = pretrain_mask(None, None, labels, np.arange(3), np.arange(0), None, get_preset('tiny').model, PretrainConfig())
    assert mask is None and report == {'skipped': 'no boxes in the labels'}
    mask, report = pretrain_mask(None, None, labels, np.arange(3), np.arange(0), None, get_preset('tiny').model, PretrainConfig(epochs_mask=0))
    assert mask is None and report == {'skipped': 'no epochs'}
