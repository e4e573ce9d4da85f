"""The image path can be learned: when the films encode the answer, the tiny model learns to read them.

At demo scale the tiny model answers from the question alone (the image control in evaluate shows it). This test
separates 'the images cannot reach the decoder' from 'the cues are too subtle to learn quickly': with films whose
brightness encodes the view, a few dozen steps suffice, and swapping the films between questions breaks the answers.
"""
import torch

from diffvqa.core import get_preset, seed_everything
from diffvqa.losses import lm_loss
from diffvqa.model import DiffVQA
from diffvqa.tokenizer import train_bpe_tokenizer


def batch(tok, labels, size):
    q = tok(['which view is this image taken?'] * len(labels), return_tensors='pt')
    a = tok([('AP view' if l else 'PA view') + tok.eos_token for l in labels], return_tensors='pt')
    img = (torch.tensor(labels, dtype=torch.float) * 0.9 + 0.05)[:, None, None, None].expand(-1, 1, size, size)
    return img, q['input_ids'], q['attention_mask'], a['input_ids'], a['attention_mask']


def test_tiny_model_learns_to_read_images_that_encode_the_answer():
    seed_everything(0)
    torch.set_num_threads(1)
    cfg = get_preset('tiny').model
    tok = train_bpe_tokenizer(['which view is this image taken?', 'AP view', 'PA view'] * 50, vocab_size=300)
    model = DiffVQA.from_preset(cfg, tokenizer=tok)
    model.freeze_image_encoder(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        labels = torch.randint(0, 2, (8,), generator=g).tolist()
        img, qi, qm, ai, am = batch(tok, labels, cfg.image_size)
        loss = lm_loss(model(img, img, qi, qm, ai, am).logits, ai, am)
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    labels = [0, 1] * 8
    img, qi, qm, ai, am = batch(tok, labels, cfg.image_size)
    with torch.no_grad():
        own = model.generate(img, img, qi, qm, max_new_tokens=4).texts
        swapped = model.generate(img.flip(0), img.flip(0), qi, qm, max_new_tokens=4).texts
    want = ['AP view' if l else 'PA view' for l in labels]
    assert sum(p == w for p, w in zip(own, want)) == len(want), own
    assert sum(p == w for p, w in zip(swapped, want)) == 0, swapped  # flipped films: every answer flips
