"""A small character transformer trained by AdamW, watched by NoetherMonitor.

The task: predict the next character of examples/data/founding_texts.txt (3 KB of public-
domain text shipped with the repository).  The model is two pre-norm transformer blocks
whose query and key projections are each followed directly by an RMSNorm over the model
width ("QK-norm") and whose MLP normalises its hidden layer with a LayerNorm (as in
NormFormer).  Each of those projections (weight and bias together) is therefore
scale-invariant, and the monitor tracks it as one block (docs/monitor.md §1); AdamW's
rotational equilibrium predicts its steady angular update sqrt(2ηλ(1−β₁)/(1+β₁)).

    python examples/char_transformer.py              # 2000 steps, ~1 min on one CPU core
    python examples/char_transformer.py --steps 20   # a smoke run (the test suite's)

Prints the loss, a sample, the monitor's report (AdamW's exact identity B.7, the angular
update against the rotational equilibrium) and saves the figure.  Without torch it says
so and exits with status 0.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "data", "founding_texts.txt")


def load_text(path=TEXT):
    """The text, its vocabulary (sorted characters) and the encoded (N,) int64 array."""
    with open(path, encoding="ascii") as fh:
        text = fh.read()
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return text, vocab, np.array([index[c] for c in text], dtype=np.int64)


def make_model(torch, vocab_size, width=64, heads=4, layers=2, context=32):
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
            self.qn, self.kn = nn.RMSNorm(width), nn.RMSNorm(width)      # QK-norm
            self.proj = nn.Linear(width, width)
            self.ln2 = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, 4 * width)
            self.fn = nn.LayerNorm(4 * width)                           # NormFormer
            self.fc2 = nn.Linear(4 * width, width)

        def forward(self, x):
            B, T, C = x.shape
            h = self.ln1(x)
            q = self.qn(self.q(h)).view(B, T, heads, C // heads).transpose(1, 2)
            k = self.kn(self.k(h)).view(B, T, heads, C // heads).transpose(1, 2)
            v = self.v(h).view(B, T, heads, C // heads).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, C))
            return x + self.fc2(F.gelu(self.fn(self.fc1(self.ln2(x)))))

    class CharTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, width)
            self.pos = nn.Parameter(0.02 * torch.randn(context, width))
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))
            self.lnf = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab_size)

        def forward(self, idx):
            x = self.emb(idx) + self.pos[: idx.shape[1]]
            return self.head(self.lnf(self.blocks(x)))

    return CharTransformer()


def make_optimizer(torch, model, lr=5e-3, weight_decay=0.5):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99),
                             weight_decay=weight_decay)


def batch(torch, data, gen, size, context):
    start = torch.randint(0, len(data) - context - 1, (size,), generator=gen)
    x = torch.stack([data[s:s + context] for s in start])
    y = torch.stack([data[s + 1:s + context + 1] for s in start])
    return x, y


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="char_transformer_monitor.png", help="figure path")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("char_transformer: this example needs PyTorch "
              "(pip install 'noether_core[torch]'); skipped")
        return 0
    from noether_core.torch import NoetherMonitor
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text, vocab, data = load_text()
    data = torch.from_numpy(data)
    model = make_model(torch, len(vocab), context=args.context)
    opt = make_optimizer(torch, model)
    mon = NoetherMonitor(model, opt, max_records=2000)
    gen = torch.Generator().manual_seed(args.seed)
    F = torch.nn.functional
    for step in range(args.steps):
        x, y = batch(torch, data, gen, args.batch, args.context)
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        loss.backward()
        opt.step()
        if (step + 1) % max(args.steps // 5, 1) == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.3f} nats/char")
    model.eval()
    with torch.no_grad():                          # a greedy sample from a prompt
        idx = torch.tensor([[vocab.index(c) for c in "We hold "]])
        for _ in range(60):
            nxt = model(idx[:, -args.context:])[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    print("sample:", repr("".join(vocab[i] for i in idx[0].tolist())))
    rep = mon.report()
    print(rep)
    eq = rep.equilibrium(0.3)
    for lab, p, m in zip(rep.labels, eq.predicted_angular_update,
                         eq.measured_angular_update, strict=True):
        print(f"  {lab:24s} angular update over steps {eq.first_step}-{eq.last_step}: "
              f"measured {m:.3e}, rotational equilibrium {p:.3e}")
    mon.plot().savefig(args.out)
    print(f"figure saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
