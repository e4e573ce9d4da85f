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


class _PatchStats:
    "A stand-in for φ: each 8 × 8 cell of a 32 px film becomes one token of (mean, max, min, std); grid 4 × 4."
    dim = 4
    def eval(self): return self
    def requires_grad_(self, flag): return self
    def __call__(self, x):
        import torch
        p = x.unfold(2, 8, 8).unfold(3, 8, 8).flatten(-2)[:, 0].flatten(1, 2)   # [B,16,64]
        return torch.stack([p.mean(-1), p.amax(-1), p.amin(-1), p.std(-1)], -1), (4, 4)


def _two_finding_films(n: int, seed: int = 0):
    "n films at 32 px: finding 0 is a grey (0.5) cell, finding 1 a white (1.0) cell, on a dark (0.1) film; each with its box."
    import numpy as np
    rng = np.random.default_rng(seed)
    x = np.full((n, 32, 32), 25, np.uint8)
    boxes, Y = [], np.zeros((n, 2), np.float32)
    for i in range(n):
        cells, bs = rng.choice(16, size=2, replace=False), []
        for k, c in enumerate(cells):
            if rng.random() < 0.7:
                r, q = divmod(int(c), 4)
                x[i, 8 * r:8 * r + 8, 8 * q:8 * q + 8] = (128, 255)[k]
                bs.append((k, [8 * q, 8 * r, 8 * q + 7, 8 * r + 7])); Y[i, k] = 1
        boxes.append(bs)
    return x, boxes, Y


def test_mask_head_learns_each_finding_in_its_own_channel():
    "With one channel per finding, g learns which finding is where (a cue it can only read from the film), and h marks a swap."
    import numpy as np, pandas as pd, torch
    from types import SimpleNamespace
    from diffvqa.core import PretrainConfig, get_preset
    from diffvqa.pretrain import FilmLabels, pretrain_mask
    x, boxes, Y = _two_finding_films(160)
    cache = SimpleNamespace(array=x, size=32)
    films = pd.DataFrame(dict(row=np.arange(160)))
    labels = FilmLabels(['effusion', 'edema'], np.zeros(160, np.int64), Y, boxes, 'ground_truth')
    mcfg = get_preset('tiny').model
    mcfg.mask_channels, mcfg.mask_hidden = 2, 32
    mask, report = pretrain_mask(cache, films, labels, np.arange(128), np.arange(128, 160), _PatchStats(), mcfg,
                                 PretrainConfig(epochs_mask=30, bs=16, lr=1e-2), progress=False)
    assert report['token_auroc'] > 0.95 and report['token_auroc_any'] > 0.95, report
    # a film with the grey finding in cell 0 against one with the white finding there: "some finding" at both visits,
    # yet F marks cell 0 as changed, and leaves an unchanged cell alone
    a, b = np.full((1, 32, 32), 0.1, np.float32), np.full((1, 32, 32), 0.1, np.float32)
    a[0, :8, :8], b[0, :8, :8] = 0.5, 1.0
    with torch.no_grad():
        fa, fb = _PatchStats()(torch.from_numpy(a)[:, None])[0], _PatchStats()(torch.from_numpy(b)[:, None])[0]
        Fg = mask.fuse(mask.token_masks(fa), mask.token_masks(fb), (4, 4)).flatten()
    assert Fg[0] > 0.9 and Fg[15] < 0.2, Fg
    mcfg.mask_channels = 1   # one "any finding" channel cannot tell the two visits apart in cell 0
    m1, _ = pretrain_mask(cache, films, labels, np.arange(128), np.arange(0), _PatchStats(), mcfg,
                          PretrainConfig(epochs_mask=30, bs=16, lr=1e-2), progress=False)
    with torch.no_grad(): assert m1.fuse(m1.token_masks(fa), m1.token_masks(fb), (4, 4)).flatten()[0] < 0.2


def test_mask_channels_must_cover_the_findings():
    "Fewer channels than findings with boxes (but more than one) is one clear error."
    import numpy as np, pandas as pd
    from types import SimpleNamespace
    from diffvqa.core import DiffVQAError, PretrainConfig, get_preset
    from diffvqa.pretrain import FilmLabels, pretrain_mask
    x, boxes, Y = _two_finding_films(8)
    labels = FilmLabels(['effusion', 'edema', 'nodule'], np.zeros(8, np.int64), np.c_[Y, np.zeros(8)], boxes, 'ground_truth')
    mcfg = get_preset('tiny').model
    mcfg.mask_channels = 2
    with pytest.raises(DiffVQAError, match='mask_channels: 2 channels .* 3 findings'):
        pretrain_mask(SimpleNamespace(array=x, size=32), pd.DataFrame(dict(row=np.arange(8))), labels, np.arange(8),
                      np.arange(0), _PatchStats(), mcfg, PretrainConfig(), progress=False)


def test_code_hash_follows_the_source(tmp_path):
    "Same modules, same hash; one changed byte or a renamed module, another hash (so cached weights are not reused)."
    from diffvqa.pretrain import code_hash
    a, b = tmp_path/'a', tmp_path/'b'
    for d in (a, b):
        d.mkdir(); (d/'x.py').write_text('X = 1\n'); (d/'y.py').write_text('Y = 2\n')
    assert code_hash(a) == code_hash(b) and len(code_hash(a)) == 64
    (b/'y.py').write_text('Y = 3\n'); assert code_hash(a) != code_hash(b)
    (b/'y.py').write_text('Y = 2\n'); assert code_hash(a) == code_hash(b)
    (b/'y.py').rename(b/'z.py'); assert code_hash(a) != code_hash(b)
    assert code_hash() == code_hash()   # the installed package


def test_tiny_has_one_mask_channel_per_synthetic_finding():
    "The tiny preset's mask head has exactly one channel per finding the synthetic benchmark can draw."
    from diffvqa.core import get_preset
    from diffvqa.lesions import CATALOGUE
    assert get_preset('tiny').model.mask_channels == len(CATALOGUE) and get_preset('paper').model.mask_channels == 1
