"diffvqa.predict: the image reader on every kind of odd file, and `diffvqa predict` end to end on a tiny random model."
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from diffvqa.core import DiffVQAError
from diffvqa.images import mimic_cxr_jpg, stretch_to_uint8
from diffvqa.predict import MAX_PIXELS, read_film, read_image

# a 3 × 4 gradient: not symmetric under any flip or rotation, so orientation errors show
G8 = (np.arange(12).reshape(3, 4) * 20).astype(np.uint8)
BIG = np.kron(G8, np.ones((16, 16), np.uint8))  # 48 × 64 blocks that survive JPEG


def luma(rgb):
    "Pillow's L conversion: ITU-R 601-2 luma with integer rounding."
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def write_dicom(path, arr, photometric='MONOCHROME2', slope=None, intercept=None, center=None, width=None,
                frames=None, pixels=True):
    pydicom = pytest.importorskip('pydicom')
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset(); ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, 'CR'
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames: ds.NumberOfFrames = frames
    if slope is not None: ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None: ds.WindowCenter, ds.WindowWidth = center, width
    if pixels: ds.PixelData = np.asarray(arr, '<u2').tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header_only(path, w, h):
    "A PNG whose header announces w × h pixels and whose data is one empty chunk."
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
                     + chunk(b'IDAT', zlib.compress(b'\0' * 16)) + chunk(b'IEND', b''))
    return path


# ---------- ordinary files ----------

def test_png_8bit_exact(tmp_path):
    Image.fromarray(G8).save(tmp_path / 'a.png')
    out = read_image(tmp_path / 'a.png')
    assert out.dtype == np.uint8 and out.shape == (3, 4) and (out == G8).all()


def test_jpeg_gray_and_rgb(tmp_path):
    Image.fromarray(BIG).save(tmp_path / 'g.jpg', quality=95)
    assert np.abs(read_image(tmp_path / 'g.jpg').astype(int) - BIG).max() <= 8
    rgb = np.stack([BIG, 255 - BIG, BIG // 2], -1)
    Image.fromarray(rgb).save(tmp_path / 'c.jpg', quality=95)
    out = read_image(tmp_path / 'c.jpg')
    assert out.shape == BIG.shape and np.abs(out.astype(int) - luma(rgb)).max() <= 8


def test_png_16bit_stretched_by_actual_range(tmp_path):
    g16 = G8.astype(np.uint16) * 16 + 100                              # 100 .. 3620: a 12-bit detector in 16 bits
    Image.fromarray(g16).save(tmp_path / 'a.png')
    assert Image.open(tmp_path / 'a.png').mode == 'I;16'
    out, how = read_film(tmp_path / 'a.png', mimic_conversion=False)
    expect = np.round((g16 - 100) / 3520 * 255).astype(np.uint8)
    assert (out == expect).all() and out.min() == 0 and out.max() == 255 and how == 'min-max'
    Image.fromarray(np.full((3, 4), 4000, np.uint16)).save(tmp_path / 'flat.png')
    assert (read_image(tmp_path / 'flat.png') == 0).all()              # a constant high-bit image reads as zeros
    assert (read_image(tmp_path / 'flat.png', mimic_conversion=False) == 0).all()


def test_png_16bit_gets_the_mimic_recipe_by_default(tmp_path):
    "Stretch, then equalise: the levels spread by how many pixels hold them, not by their value."
    g16 = np.array([[100, 100, 100, 100], [100, 100, 200, 4000]], np.uint16)   # six dark pixels, two brighter
    Image.fromarray(g16).save(tmp_path / 'a.png')
    out, how = read_film(tmp_path / 'a.png')
    # stretch: 100 -> 0, 200 -> round(100 * 255 / 3900) = 7, 4000 -> 255; counts c = 6, 7, 8, c0 = 6
    assert how == 'mimic-cxr-jpg' and (out == [[0, 0, 0, 0], [0, 0, 128, 255]]).all()
    assert (read_image(tmp_path / 'a.png', mimic_conversion=False) == [[0, 0, 0, 0], [0, 0, 7, 255]]).all()


def test_rgb_png_luma(tmp_path):
    rgb = np.stack([G8, 255 - G8, G8 // 2], -1)
    Image.fromarray(rgb).save(tmp_path / 'a.png')
    assert (read_image(tmp_path / 'a.png') == luma(rgb)).all()


def test_rgba_composited_on_black(tmp_path):
    rgba = np.dstack([np.stack([G8] * 3, -1), np.full((3, 4), 255, np.uint8)])
    rgba[0, 1, 3] = 0                                                   # fully transparent
    rgba[2, 3, 3] = 128                                                 # half transparent
    Image.fromarray(rgba).save(tmp_path / 'a.png')
    out = read_image(tmp_path / 'a.png')
    assert out[0, 1] == 0
    assert abs(int(out[2, 3]) - round(int(G8[2, 3]) * 128 / 255)) <= 1
    keep = np.ones((3, 4), bool); keep[0, 1] = keep[2, 3] = False
    assert (out[keep] == G8[keep]).all()
    la = Image.fromarray(rgba).convert('LA'); la.save(tmp_path / 'la.png')
    assert read_image(tmp_path / 'la.png')[0, 1] == 0


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.fromarray(G8).convert('P')                               # 12 grey levels fit a palette exactly
    im.save(tmp_path / 'p.png')
    assert Image.open(tmp_path / 'p.png').mode == 'P'
    assert (read_image(tmp_path / 'p.png') == G8).all()
    idx = np.asarray(im)[1, 2]
    im.save(tmp_path / 'pt.png', transparency=int(idx))                 # one palette entry transparent
    out = read_image(tmp_path / 'pt.png')
    assert out[1, 2] == 0 and (out[np.asarray(im) != idx] == G8[np.asarray(im) != idx]).all()
    Image.fromarray(G8).convert('P').save(tmp_path / 'p.gif')
    assert (read_image(tmp_path / 'p.gif') == G8).all()


def test_one_bit(tmp_path):
    Image.fromarray(G8 > 100).save(tmp_path / 'b.png')
    assert Image.open(tmp_path / 'b.png').mode == '1'
    assert (read_image(tmp_path / 'b.png') == np.where(G8 > 100, 255, 0)).all()


@pytest.mark.parametrize('orientation,turn', [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_applied(tmp_path, orientation, turn):
    exif = Image.Exif(); exif[0x0112] = orientation
    Image.fromarray(BIG).save(tmp_path / 'r.jpg', exif=exif, quality=95)
    out = read_image(tmp_path / 'r.jpg')
    want = np.rot90(BIG, turn)                                          # np.rot90: positive = counter-clockwise
    assert out.shape == want.shape and np.abs(out.astype(int) - want).max() <= 8


def test_resize_matches_the_cache(tmp_path):
    from diffvqa.images import load_image
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 70)) * 255).astype(np.uint8)).save(tmp_path / 'a.jpg', quality=90)
    Image.fromarray((rng.random((50, 80)) * 255).astype(np.uint8)).save(tmp_path / 'b.png')
    Image.fromarray((rng.random((60, 45, 3)) * 255).astype(np.uint8)).save(tmp_path / 'c.jpg', quality=90)
    Image.fromarray((rng.random((70, 50)) * 4000 + 50).astype(np.uint16)).save(tmp_path / 'd.png')
    for name in ('a.jpg', 'b.png', 'c.jpg', 'd.png'):
        for fit in ('pad', 'crop', 'stretch'):
            out = read_image(tmp_path / name, size=32, fit=fit)
            assert out.shape == (32, 32) and (out == load_image(tmp_path / name, 32, fit)[0]).all()


# ---------- DICOM ----------

STORED = np.array([[0, 1000], [2000, 4000]], np.uint16)
MID = round(255 * ((1900 - 1999.5) / 1999 + 0.5))                      # 1900 inside the window [1000, 3000]


def test_dicom_rescale_and_window(tmp_path):
    "Without the MIMIC-CXR-JPG conversion a DICOM is read the display way: modality LUT, then the window."
    write_dicom(tmp_path / 'a.dcm', STORED, slope=2, intercept=-100, center=2000, width=2000)
    out, how = read_film(tmp_path / 'a.dcm', mimic_conversion=False)
    assert (out == [[0, MID], [255, 255]]).all() and how == 'dicom-display'


def test_dicom_monochrome1_inverted(tmp_path):
    write_dicom(tmp_path / 'a.dcm', STORED, photometric='MONOCHROME1', slope=2, intercept=-100, center=2000, width=2000)
    assert (read_image(tmp_path / 'a.dcm', mimic_conversion=False) == 255 - np.array([[0, MID], [255, 255]])).all()
    assert (read_image(tmp_path / 'a.dcm') == [[255, 170], [85, 0]]).all()   # recipe: stored values, inverted, equalised


def test_dicom_default_is_the_mimic_recipe_on_stored_values(tmp_path):
    "The window and rescale do not matter to the recipe: it min-max scales the stored values (4 levels -> 0, 85, 170, 255)."
    write_dicom(tmp_path / 'a.dcm', STORED, slope=2, intercept=-100, center=2000, width=2000)
    out, how = read_film(tmp_path / 'a.dcm')
    assert how == 'mimic-cxr-jpg' and (out == [[0, 85], [170, 255]]).all()


def test_dicom_without_window_is_stretched_and_found_by_marker(tmp_path):
    write_dicom(tmp_path / 'image.bin', STORED)                          # no DICOM suffix: the DICM marker decides
    assert (read_image(tmp_path / 'image.bin', mimic_conversion=False) == stretch_to_uint8(STORED)).all()
    assert (read_image(tmp_path / 'image.bin') == mimic_cxr_jpg(STORED)).all()


def test_dicom_multiframe_first_frame(tmp_path):
    frames = np.stack([STORED, 4000 - STORED])
    write_dicom(tmp_path / 'a.dcm', frames, frames=2)
    assert (read_image(tmp_path / 'a.dcm') == mimic_cxr_jpg(STORED)).all()
    assert (read_image(tmp_path / 'a.dcm', mimic_conversion=False) == stretch_to_uint8(STORED)).all()


def recipe_png(stored, monochrome1, path):
    "The MIMIC-CXR-JPG conversion written out by hand: min-max to 8 bit, invert MONOCHROME1, equalise the histogram."
    a = stored.astype(np.float64)
    u8 = np.round((a - a.min()) * (255.0 / (a.max() - a.min()))).astype(np.uint8)
    if monochrome1: u8 = 255 - u8
    hist = np.bincount(u8.ravel(), minlength=256)
    cdf = hist.cumsum()
    c0 = cdf[np.flatnonzero(hist)[0]]
    lut = np.clip(np.rint((cdf - c0) * 255.0 / (u8.size - c0)), 0, 255).astype(np.uint8)
    Image.fromarray(lut[u8]).save(path)
    return path


def film_12bit(h=150, w=110, seed=0):
    "A smooth 12-bit film: a bright blob, a ramp and noise, values in 0..4095."
    yy, xx = np.mgrid[0:h, 0:w]
    a = 500 + 2500 * np.exp(-((xx - w / 3) ** 2 + (yy - h / 2) ** 2) / (h * w / 20)) + 8 * xx
    return (a + np.random.default_rng(seed).normal(0, 50, (h, w))).clip(0, 4095).astype(np.uint16)


@pytest.mark.parametrize('photometric', ['MONOCHROME2', 'MONOCHROME1'])
@pytest.mark.parametrize('fit', ['pad', 'crop'])
def test_dicom_12bit_reaches_the_model_as_its_mimic_jpg_png(tmp_path, photometric, fit):
    "A 12-bit DICOM and the 8-bit PNG made from it by the MIMIC-CXR-JPG recipe give the same model input (<= 1 grey level)."
    film = film_12bit()
    dcm = write_dicom(tmp_path / 'a.dcm', film, photometric=photometric)
    pydicom = pytest.importorskip('pydicom')
    ds = pydicom.dcmread(dcm)
    assert (ds.BitsStored, ds.PhotometricInterpretation) == (12, photometric)
    png = recipe_png(film, photometric == 'MONOCHROME1', tmp_path / 'a.png')
    x_dcm, how = read_film(dcm, size=48, fit=fit)
    x_png = read_image(png, size=48, fit=fit)
    assert how == 'mimic-cxr-jpg' and x_dcm.shape == (48, 48)
    assert np.abs(x_dcm.astype(int) - x_png).max() <= 1
    off = read_image(dcm, size=48, fit=fit, mimic_conversion=False)      # the stretch alone is a different picture
    assert np.abs(off.astype(int) - x_png).max() > 20


def test_dicom_errors(tmp_path, monkeypatch):
    write_dicom(tmp_path / 'empty.dcm', STORED, pixels=False)
    with pytest.raises(DiffVQAError, match=r'empty.dcm: not a readable DICOM image \(no pixel data\)'): read_image(tmp_path / 'empty.dcm')
    write_dicom(tmp_path / 'a.dcm', STORED)
    with pytest.raises(DiffVQAError, match='exceeds the limit'): read_image(tmp_path / 'a.dcm', max_pixels=3)
    (tmp_path / 'junk.dcm').write_bytes(b'not dicom at all' * 4)
    with pytest.raises(DiffVQAError, match='junk.dcm: not a readable DICOM image'): read_image(tmp_path / 'junk.dcm')
    monkeypatch.setitem(sys.modules, 'pydicom', None)                    # as if pydicom were not installed
    with pytest.raises(DiffVQAError, match='install pydicom'): read_image(tmp_path / 'a.dcm')


# ---------- files that must be refused with one line ----------

def test_decompression_bomb_header(tmp_path):
    png_header_only(tmp_path / 'bomb.png', 50_000, 50_000)               # 2.5 gigapixels: Pillow's own guard fires
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(DiffVQAError, match='bomb.png') as e: read_image(tmp_path / 'bomb.png')
    assert '\n' not in str(e.value)
    png_header_only(tmp_path / 'big.png', 12_000, 12_000)               # 144 Mpx: above our limit, below Pillow's
    assert 12_000 ** 2 > MAX_PIXELS
    with pytest.raises(DiffVQAError, match='big.png: image of 12000x12000 pixels exceeds the limit'):
        read_image(tmp_path / 'big.png')


@pytest.mark.parametrize('name,data', [
    ('notes.png', b'this is a text file, not a picture\n'),
    ('empty.jpg', b''),
    ('header.png', b'\x89PNG\r\n\x1a\n'),
])
def test_not_an_image(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DiffVQAError, match=f'{name}: not a readable image') as e: read_image(tmp_path / name)
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('suffix', ['jpg', 'png'])
def test_truncated_file(tmp_path, suffix):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / f'full.{suffix}')
    data = (tmp_path / f'full.{suffix}').read_bytes()
    (tmp_path / f'cut.{suffix}').write_bytes(data[:len(data) // 2])
    with pytest.raises(DiffVQAError, match=f'cut.{suffix}: not a readable image'): read_image(tmp_path / f'cut.{suffix}')


def test_missing_and_directory(tmp_path):
    with pytest.raises(DiffVQAError, match='nope.png: no such file'): read_image(tmp_path / 'nope.png')
    with pytest.raises(DiffVQAError, match='not a file'): read_image(tmp_path)


# ---------- predict end to end on a random-init tiny model ----------

QUESTION = 'what has changed compared to the reference image?'


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    "A run folder whose best/ holds a random-init tiny model, as `diffvqa train` leaves it."
    import torch
    from diffvqa.core import seed_everything
    from diffvqa.model import DiffVQA
    from diffvqa.tokenizer import train_bpe_tokenizer
    torch.set_num_threads(2)
    seed_everything(0)
    texts = [QUESTION, 'nothing has changed.', 'is there pneumothorax?', 'yes', 'no',
             'the main image has an additional finding of pleural effusion than the reference image.'] * 4
    model = DiffVQA.from_preset('tiny', tokenizer=train_bpe_tokenizer(texts, vocab_size=300))
    run = tmp_path_factory.mktemp('run')
    model.save_pretrained(run / 'best')
    imgs = tmp_path_factory.mktemp('imgs')
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((150, 120)) * 255).astype(np.uint8)).save(imgs / 'main.jpg', quality=90)
    Image.fromarray((rng.random((100, 100)) * 65535).astype(np.uint16)).save(imgs / 'ref.png')
    (imgs / 'bad.png').write_text('not an image')
    return run, imgs, model


def test_predict_writes_answer_and_overlay(tiny_run, tmp_path):
    import json
    from diffvqa.predict import predict
    run, imgs, model = tiny_run
    out = tmp_path / 'out'
    pred = predict(run, imgs / 'main.jpg', imgs / 'ref.png', '  What has   CHANGED compared to the reference image? ',
                   out=out, max_new_tokens=5)
    S = model.config.image_size
    assert pred.main.shape == pred.ref.shape == pred.M.shape == pred.U.shape == pred.F.shape == (S, S)
    assert (pred.main == read_image(imgs / 'main.jpg', size=S)).all()   # the same preprocessing as the reader
    np.testing.assert_allclose(pred.M, pred.lam * pred.U + (1 - pred.lam) * pred.F, atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ['answer.json', 'answer.txt', 'overlay.png']
    assert (out / 'answer.txt').read_text() == pred.answer + '\n'
    info = json.loads((out / 'answer.json').read_text())
    assert info['answer'] == pred.answer and info['main'] == str(imgs / 'main.jpg') and info['model'] == str(run / 'best')
    assert info['image_size'] == S and set(info['masks']) == {'M', 'U', 'F'}
    assert info['masks']['M']['min'] == pytest.approx(float(pred.M.min()), abs=1e-6)
    np.testing.assert_allclose(info['theta'], np.eye(2, 3), atol=1e-6)  # untrained registration: identity
    assert info['answer_from'] == 'change readout' and info['decoder_answer'] == pred.decoder_answer is not None  # tiny writes this answer from its readout
    with Image.open(out / 'overlay.png') as im: assert im.size == (2 * S + 4, S) and im.mode == 'RGB'


def test_predict_matches_direct_generate(tiny_run):
    "predict feeds the model exactly what a hand-built batch would."
    import torch
    from diffvqa.predict import predict
    run, imgs, model = tiny_run
    pred = predict(model, imgs / 'main.jpg', imgs / 'ref.png', QUESTION, max_new_tokens=5, num_beams=2)
    S = model.config.image_size
    x = [torch.from_numpy(read_image(imgs / f, size=S)).float().div(255)[None, None] for f in ('main.jpg', 'ref.png')]
    q = model.tokenizer([QUESTION], add_special_tokens=False, return_tensors='pt')
    g = model.generate(*x, q['input_ids'], q['attention_mask'], max_new_tokens=5, num_beams=2)
    assert pred.answer == g.texts[0]
    np.testing.assert_allclose(pred.M, g.M[0, 0].numpy(), atol=1e-6)


def test_predict_bad_inputs(tiny_run, tmp_path):
    from diffvqa.predict import predict
    run, imgs, _ = tiny_run
    with pytest.raises(DiffVQAError, match='bad.png: not a readable image'):
        predict(run, imgs / 'bad.png', imgs / 'ref.png', QUESTION)
    with pytest.raises(DiffVQAError, match='no trained model'): predict(tmp_path, imgs / 'main.jpg', imgs / 'ref.png', QUESTION)
    with pytest.raises(DiffVQAError, match='--question'): predict(run, imgs / 'main.jpg', imgs / 'ref.png', '   ')
    with pytest.raises(DiffVQAError, match='--beams'): predict(run, imgs / 'main.jpg', imgs / 'ref.png', QUESTION, num_beams=0)
    import shutil
    broken = tmp_path / 'broken'
    shutil.copytree(run / 'best', broken)
    data = (broken / 'model.safetensors').read_bytes()
    (broken / 'model.safetensors').write_bytes(data[:len(data) // 3])   # a download cut short
    with pytest.raises(DiffVQAError, match='broken: could not load the model') as e:
        predict(broken, imgs / 'main.jpg', imgs / 'ref.png', QUESTION)
    assert '\n' not in str(e.value)


def _cli(*args):
    import subprocess
    return subprocess.run([sys.executable, '-c', 'import sys; from diffvqa.cli import main; sys.exit(main())', 'predict', *args],
                          capture_output=True, text=True, timeout=300)


def _predict_wired():
    from diffvqa.cli import COMMANDS
    return any(c.name == 'predict' for c in COMMANDS)


def test_run_predict_prints_the_answer(tiny_run, tmp_path, capsys):
    import argparse
    from diffvqa.predict import add_predict_args, run_predict
    run, imgs, _ = tiny_run
    p = argparse.ArgumentParser(); add_predict_args(p)
    args = p.parse_args(['--run', str(run), '--main', str(imgs / 'main.jpg'), '--ref', str(imgs / 'ref.png'),
                         '--question', QUESTION, '--out', str(tmp_path / 'o')])
    assert run_predict(args) == 0
    out = capsys.readouterr()
    assert out.out == (tmp_path / 'o' / 'answer.txt').read_text()      # stdout: the answer only
    assert 'overlay.png' in out.err


@pytest.mark.skipif(not _predict_wired(), reason='`predict` is not yet registered in diffvqa.cli.COMMANDS')
def test_cli_bad_image_exit_2_one_line(tiny_run, tmp_path):
    run, imgs, _ = tiny_run
    r = _cli('--run', str(run), '--main', str(imgs / 'bad.png'), '--ref', str(imgs / 'ref.png'), '--question', QUESTION)
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.count('\n') == 1 and 'bad.png: not a readable image' in r.stderr
    r = _cli('--run', str(run), '--main', str(imgs / 'main.jpg'), '--ref', str(imgs / 'ref.png'), '--question', QUESTION,
             '--out', str(tmp_path / 'o'), '--beams', '2')
    assert r.returncode == 0, r.stderr
    assert r.stdout == (tmp_path / 'o' / 'answer.txt').read_text()


# ---------- one spelling per question, the conversion record, long questions ----------

SPELLINGS = ['what has changed compared to the reference image?', '  What has changed compared to the Reference Image ?  ',
             'WHAT HAS CHANGED COMPARED TO THE REFERENCE IMAGE']


def test_equivalent_spellings_are_one_input_and_one_answer(tiny_run):
    "The three spellings reach the model as identical token ids (the datasets' own path) and get the same answer."
    from diffvqa.data import encode_questions
    from diffvqa.predict import predict, question_ids
    run, imgs, model = tiny_run
    L = model.config.max_question_len
    ids = [question_ids(model.tokenizer, q, L) for q in SPELLINGS]
    assert ids[0] == ids[1] == ids[2] and ids[0][1] == 0
    assert ids[0][0] == encode_questions(model.tokenizer, [SPELLINGS[0]], L)[0].tolist()   # what training and evaluation feed
    assert ids[0][0] == model.tokenizer(SPELLINGS[0], add_special_tokens=False)['input_ids']   # release form: unchanged
    preds = [predict(model, imgs / 'main.jpg', imgs / 'ref.png', q, max_new_tokens=6) for q in SPELLINGS]
    assert len({p.answer for p in preds}) == 1 and len({round(p.score, 6) for p in preds}) == 1
    assert {p.question_used for p in preds} == {SPELLINGS[0]}


def test_answer_json_records_the_image_conversion(tiny_run, tmp_path):
    import json
    from diffvqa.predict import predict
    run, imgs, model = tiny_run
    dcm = write_dicom(tmp_path / 'a.dcm', film_12bit(), photometric='MONOCHROME1')
    predict(run, dcm, imgs / 'main.jpg', QUESTION, out=tmp_path / 'on', max_new_tokens=3)
    conv = json.loads((tmp_path / 'on' / 'answer.json').read_text())['image_conversion']
    assert (conv['main'], conv['ref'], conv['mimic_conversion']) == ('mimic-cxr-jpg', 'as stored', True)
    assert 'histogram equalised' in conv['steps']['mimic-cxr-jpg']
    p = predict(run, dcm, imgs / 'ref.png', QUESTION, out=tmp_path / 'off', max_new_tokens=3, mimic_conversion=False)
    conv = json.loads((tmp_path / 'off' / 'answer.json').read_text())['image_conversion']
    assert (conv['main'], conv['ref'], conv['mimic_conversion']) == ('dicom-display', 'min-max', False)
    assert (p.main == read_image(dcm, size=model.config.image_size, mimic_conversion=False)).all()


def test_long_question_warns_once_with_the_count(tiny_run, tmp_path, capsys):
    import argparse
    import json
    from diffvqa.predict import add_predict_args, run_predict
    run, imgs, model = tiny_run
    words = ('is there ' + ' and '.join(['pneumothorax'] * 20)).split()
    assert len(words) > 40
    q = ' '.join(words) + '?'
    n = len(model.tokenizer(q, add_special_tokens=False)['input_ids'])
    L = model.config.max_question_len
    p = argparse.ArgumentParser(); add_predict_args(p)
    args = p.parse_args(['--run', str(run), '--main', str(imgs / 'main.jpg'), '--ref', str(imgs / 'ref.png'),
                         '--question', q.upper(), '--out', str(tmp_path / 'o'), '--no-mimic-conversion'])
    assert run_predict(args) == 0
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if 'token(s) cut' in line]
    assert ours == [f'warning: --question: {n} tokens, the model reads the first {L}; {n - L} token(s) cut']
    info = json.loads((tmp_path / 'o' / 'answer.json').read_text())
    assert info['question_tokens_cut'] == n - L and info['image_conversion']['mimic_conversion'] is False
    capsys.readouterr()
    args.question = QUESTION
    assert run_predict(args) == 0 and 'token(s) cut' not in capsys.readouterr().err     # a short question: no warning


def test_single_visit_needs_no_reference_but_a_difference_question_does(tiny_run, tmp_path, capsys):
    "No prior study: a question about the main film goes through the no-prior path; a difference question is refused."
    import json
    import torch
    from diffvqa.predict import predict
    run, imgs, model = tiny_run
    pred = predict(run, imgs / 'main.jpg', None, 'is there pneumothorax?', out=tmp_path / 'one', max_new_tokens=4)
    info = json.loads((tmp_path / 'one' / 'answer.json').read_text())
    assert info['ref'] == '' and info['image_conversion']['ref'] == 'none (single visit)'
    assert 'answer_from' not in info and pred.decoder_answer is None   # not a difference question: the decoder's answer
    # the same answer as the model's single-visit path with any stand-in reference
    S = model.config.image_size
    x = torch.from_numpy(pred.main).float().div(255)[None, None]
    q = model.tokenizer(['is there pneumothorax?'], add_special_tokens=False, return_tensors='pt')
    g = model.generate(x, torch.rand_like(x), q['input_ids'], q['attention_mask'], max_new_tokens=4, has_ref=torch.tensor([False]))
    assert g.texts[0] == pred.answer
    with pytest.raises(DiffVQAError, match='--ref: a difference question compares two studies'):
        predict(run, imgs / 'main.jpg', None, QUESTION)
    rc = _cli('--run', run, '--main', imgs / 'main.jpg', '--question', 'What has changed compared to the reference image')
    assert rc.returncode == 2 and len(rc.stderr.strip().splitlines()) == 1 and '--ref' in rc.stderr
