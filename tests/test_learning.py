"""The tiny model learns what it can only learn from the films.

Two cues: brightness (the whole film says the view) and place (a lesion on the left or the right half of an
otherwise identical film, same total brightness). Each time the films are swapped between questions, every answer
flips: the answers come from the films, not from the question.
"""
import torch

from diffvqa.core import get_preset, seed_everything
from diffvqa.losses import lm_loss
from diffvqa.model import DiffVQA
from diffvqa.tokenizer import train_bpe_tokenizer


def _train(model, tok, make, steps, bs=8, lr=1e-3):
    "Train on `make(labels)` batches for `steps` steps, φ frozen."
    model.freeze_image_encoder(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        labels = torch.randint(0, 2, (bs,), generator=g).tolist()
        img, qi, qm, ai, am = make(labels, g)
        loss = lm_loss(model(img, img, qi, qm, ai, am).logits, ai, am)
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()


def _answers(model, img, qi, qm):
    with torch.no_grad(): return model.generate(img, img, qi, qm, max_new_tokens=4).texts


def test_tiny_model_reads_brightness_that_encodes_the_view():
    seed_everything(0); torch.set_num_threads(1)
    cfg = get_preset('tiny').model
    cfg.change_width = 0   # φ and the decoder alone (a random change CNN in the fusion slowed this to a miss in 60 steps; it has its own learning test)
    cfg.difference_writer = 'decoder'   # no change CNN to write difference answers from
    tok = train_bpe_tokenizer(['which view is this image taken?', 'AP view', 'PA view'] * 50, vocab_size=300)
    def make(labels, g=None):
        q = tok(['which view is this image taken?'] * len(labels), return_tensors='pt')
        a = tok([('AP view' if l else 'PA view') + tok.eos_token for l in labels], return_tensors='pt')
        img = (torch.tensor(labels, dtype=torch.float) * 0.9 + 0.05)[:, None, None, None].expand(-1, 1, cfg.image_size, cfg.image_size)
        return img.contiguous(), q['input_ids'], q['attention_mask'], a['input_ids'], a['attention_mask']
    model = _train(DiffVQA.from_preset(cfg, tokenizer=tok), tok, make, 60)
    img, qi, qm, _, _ = make([0, 1] * 8)
    want = ['PA view', 'AP view'] * 8
    assert _answers(model, img, qi, qm) == want
    assert sum(p == w for p, w in zip(_answers(model, img.flip(0), qi, qm), want)) == 0   # swapped films: every answer flips


def test_tiny_model_reads_where_a_lesion_is():
    "Left or right: the same bright square on a uniform film, placed in one half; the total brightness says nothing."
    seed_everything(0); torch.set_num_threads(1)
    cfg = get_preset('tiny').model
    S = cfg.image_size
    q_text = 'is the lesion located on the left side or right side?'
    tok = train_bpe_tokenizer([q_text, 'left side', 'right side'] * 50, vocab_size=300)
    def make(labels, g):
        q = tok([q_text] * len(labels), return_tensors='pt')
        a = tok([('right side' if l else 'left side') + tok.eos_token for l in labels], return_tensors='pt')
        img = torch.full((len(labels), 1, S, S), 0.4)
        for i, l in enumerate(labels):
            y = int(torch.randint(8, S - 40, (1,), generator=g))
            x = int(torch.randint(8, S // 2 - 40, (1,), generator=g)) + (S // 2 if l else 0)
            img[i, :, y:y + 32, x:x + 32] = 0.9
        return img, q['input_ids'], q['attention_mask'], a['input_ids'], a['attention_mask']
    model = _train(DiffVQA.from_preset(cfg, tokenizer=tok), tok, make, 120)
    g = torch.Generator().manual_seed(123)
    img, qi, qm, _, _ = make([0, 1] * 8, g)
    assert torch.allclose(img[0].mean(), img[1].mean())                                  # same brightness either way
    want = ['left side', 'right side'] * 8
    got = _answers(model, img, qi, qm)
    assert sum(p == w for p, w in zip(got, want)) >= 15, got
    flipped = _answers(model, img.flip(-1), qi, qm)                                       # mirror the films
    assert sum(p != w for p, w in zip(flipped, want)) >= 15, flipped                    # the answers follow the lesion
