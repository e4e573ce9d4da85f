"Figures from diffvqa.visualize: they draw from plain arrays, return a Figure and write real PNGs."
import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from diffvqa.core import DiffVQAError, read_metrics_csv
from diffvqa.visualize import (checkerboard, mask_range, overlay_pair, overlay_png, overlay_rgb, plot_metric_bars,
                               plot_training_curves, show_mask_pair, show_mask_parts,
                               show_registration, to_image, upsample_mask, warp_image)


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    main = (rng.random((32, 32)) * 255).astype(np.uint8)
    ref = np.roll(main, 2, axis=1)
    M = torch.rand(1, 1, 32, 32)
    return main, ref, M


def png_size(path):
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return im.size


def test_to_image_and_upsample():
    assert to_image(np.full((2, 3), 255, np.uint8)).tolist() == [[1.0] * 3] * 2
    assert to_image(torch.full((1, 1, 2, 3), -1.0)).tolist() == [[0.0] * 3] * 2
    m = np.arange(4, dtype=np.float32).reshape(2, 2)
    up = upsample_mask(m, (6, 6), mode='nearest')
    assert up.shape == (6, 6) and (up[:3, :3] == 0).all() and (up[3:, 3:] == 3).all()
    with pytest.raises(DiffVQAError, match='2-D'): to_image(np.zeros((2, 2, 2, 2)))


def test_overlay_limits():
    img = np.full((4, 4), 0.5, np.float32)
    m = np.zeros((4, 4)); m[1, 2] = 2.0
    o = overlay_rgb(img, m, alpha=1.0)
    assert (o[m == 0] == 128).all()                                    # zero mask leaves the gray untouched
    top = np.round(np.array(colormaps['jet'](1.0)[:3]) * 255).astype(np.uint8)
    assert (o[1, 2] == top).all()                                      # the maximum at full opacity is the top colour
    assert mask_range(np.ones((2, 2))) == (1.0, 2.0)                   # a flat mask gets a non-empty range


def test_overlay_pair_uses_one_range(pair):
    main, ref, M = pair
    o = overlay_pair(main, main, M, gap=3)
    assert o.shape == (32, 67, 3) and (o[:, 32:35] == 0).all()
    assert (o[:, :32] == o[:, 35:]).all()                              # same image, same mask: identical panels
    with pytest.raises(DiffVQAError, match='differs'): overlay_pair(main, main[:16], M)


def test_overlay_png(pair, tmp_path):
    main, ref, M = pair
    p = overlay_png(main, ref, M, tmp_path / 'o.png')
    assert png_size(p) == (2 * 32 + 4, 32)
    assert [f.name for f in tmp_path.iterdir()] == ['o.png']           # no temp file left behind


def test_checkerboard_and_warp():
    a, b = np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)
    cb = checkerboard(a, b, tiles=4)
    assert cb[0, 0] == 0 and cb[0, 2] == 1 and cb[2, 2] == 0 and cb.mean() == 0.5
    img = np.arange(64, dtype=np.float32).reshape(8, 8) / 63
    np.testing.assert_allclose(warp_image(img, [[1, 0, 0], [0, 1, 0]]), img, atol=1e-6)  # identity Θ
    shifted = warp_image(img, np.array([[1, 0, 2 / 8], [0, 1, 0]]))                       # sample one pixel to the right
    np.testing.assert_allclose(shifted[:, :-1], img[:, 1:], atol=1e-5)


def test_mask_figures(pair, tmp_path):
    main, ref, M = pair
    fig = show_mask_pair(main, ref, M, title='q', save=tmp_path / 'pair.png')
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert png_size(tmp_path / 'pair.png')[0] > 100
    U, F = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    fig = show_mask_parts(main, U, F, lam=0.7, save=tmp_path / 'parts.png')
    assert len(fig.axes) == 3 and '0.70' in fig.axes[2].get_title()
    assert len(show_mask_parts(main, U, F).axes) == 2                   # no M, no λ: just U and F
    png_size(tmp_path / 'parts.png')


def test_registration_figure(pair, tmp_path):
    main, ref, _ = pair
    fig = show_registration(main, ref, theta=torch.eye(2, 3), save=tmp_path / 'reg.png')
    assert len(fig.axes) == 6
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == titles[4]                                       # identity warp: same difference before and after
    png_size(tmp_path / 'reg.png')
    with pytest.raises(DiffVQAError, match='warped'): show_registration(main, ref)


def test_metric_bars_from_evaluate_dict(tmp_path):
    block = lambda b4, c: {'n': 5, 'BLEU-1': .5, 'BLEU-4': b4, 'METEOR': .2, 'ROUGE-L': .4, 'CIDEr': c, 'exact_match': .1}
    metrics = {'n_questions': 10, 'overall': block(.2, 1.0), 'by_type': {'difference': block(.3, 1.2), 'view': block(0., .4)}}
    fig = plot_metric_bars(metrics, save=tmp_path / 'bars.png')
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 4                                    # 2 types × BLEU-1, BLEU-4, METEOR, ROUGE-L
    assert sorted(p.get_height() for p in ax.patches)[:2] == [0.0, 0.2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ['difference', 'view']
    metrics['baseline'] = {'by_type': {'difference': block(.1, .5)}}    # the baseline lacks 'view': a NaN bar
    fig = plot_metric_bars(metrics, metrics=['CIDEr'])
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:2] == [1.2, 0.4] and heights[2] == 0.5 and np.isnan(heights[3])
    assert len(plot_metric_bars({'difference': {'BLEU-4': .3}}).axes[0].patches) == 1  # a plain mapping works
    png_size(tmp_path / 'bars.png')
    with pytest.raises(DiffVQAError): plot_metric_bars({})


def test_training_curves_from_csv(tmp_path):
    (tmp_path / 'metrics.csv').write_text('epoch,stage,lambda,train_loss,valid_loss,train_lm,valid_lm,cider\n'
                                          '1,1,1.0,3.0,3.1,2.9,3.0,0.1\n2,1,0.9,2.0,2.2,1.9,2.1,\n3,2,0.7,1.5,1.9,1.4,1.8,0.4\n')
    rows = read_metrics_csv(tmp_path)
    assert rows[2] == {'epoch': 3.0, 'stage': 2.0, 'lambda': 0.7, 'train_loss': 1.5, 'valid_loss': 1.9,
                       'train_lm': 1.4, 'valid_lm': 1.8, 'cider': 0.4}
    assert np.isnan(rows[1]['cider'])                                   # an empty cell (no score that epoch)
    fig = plot_training_curves(tmp_path / 'metrics.csv', save=tmp_path / 'curves.png')
    ax, ax2, ax3 = fig.axes
    lines = ax.get_lines()
    assert [l.get_label() for l in lines[:4]] == ['train_loss', 'valid_loss', 'train_lm', 'valid_lm']
    assert lines[2].get_linestyle() == '-' and lines[3].get_linestyle() == '--'
    assert lines[2].get_color() == lines[3].get_color()                 # one colour per term
    assert lines[-1].get_xdata()[0] == 2.5                              # the stage boundary
    np.testing.assert_allclose(ax2.get_lines()[0].get_ydata(), [0.1, np.nan, 0.4])
    np.testing.assert_allclose(ax3.get_lines()[0].get_ydata(), [1.0, 0.9, 0.7])  # λ
    png_size(tmp_path / 'curves.png')
    assert len(plot_training_curves(tmp_path, score=None).axes) == 1
    rows = [dict(epoch=1, train_loss=2.0, train_reg=0.0), dict(epoch=2, train_loss=1.0, train_reg=1e-9)]
    ax = plot_training_curves(rows).axes[0]
    assert [l.get_label() for l in ax.get_lines()] == ['train_loss'] and ax.get_yscale() == 'log'  # zero: left out
    ax = plot_training_curves(rows, losses=['train_loss', 'train_reg']).axes[0]
    assert len(ax.get_lines()) == 2 and ax.get_yscale() == 'linear'    # asked for by name: linear axis
    with pytest.raises(DiffVQAError, match='no such metrics file'): read_metrics_csv(tmp_path / 'nope.csv')
