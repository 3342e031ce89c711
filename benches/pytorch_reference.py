"""PyTorch counterpart of `benches/model.rs`: Diff_LLaMA_6M forward at 1x1024 and 8x256 and a training
step (forward, masked ELBO loss, backward, AdamW) at 4x256, on the CPU with 2 threads, fp32.

Not part of the tests. Run with: pip install torch numpy && python3 benches/pytorch_reference.py
Prints the median wall time of each case in milliseconds.
"""
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)

V, C, H, L, I, BLOCK = 32000, 256, 4, 6, 1024, 2048
D = C // H


class RMSNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * self.weight


def rope_tables():
    theta = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    ang = torch.outer(torch.arange(BLOCK).float(), theta)
    return ang.cos().bfloat16().float(), ang.sin().bfloat16().float()


COS, SIN = rope_tables()


def rope(x):  # x: [B, H, T, D]
    t = x.shape[2]
    cos, sin = COS[:t], SIN[:t]
    a, b = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm_1, self.norm_2 = RMSNorm(), RMSNorm()
        self.attn = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C, bias=False)
        self.w1 = nn.Linear(C, I, bias=False)
        self.w2 = nn.Linear(C, I, bias=False)
        self.w3 = nn.Linear(I, C, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.attn(self.norm_1(x)).view(b, t, H, 3, D)
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))
        y = F.scaled_dot_product_attention(rope(q), rope(k), v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, C))
        u = self.norm_2(x)
        return x + self.w3(F.silu(self.w1(u)) * self.w2(u))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(V + 1, C)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.ln_f = RMSNorm()
        self.lm_head = nn.Linear(C, V, bias=False)

    def forward(self, ids):
        x = self.wte(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


def timeit(fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


model = Model()
non_emb = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("wte", "lm_head")))
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, non-embedding params {non_emb}")

for b, t in [(1, 1024), (8, 256)]:
    ids = torch.randint(0, V, (b, t))
    ids[torch.rand(b, t) < 0.5] = V
    with torch.no_grad():
        ms = timeit(lambda: model(ids))
    print(f"forward {b}x{t}: {ms:.1f} ms")

opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
x0 = torch.randint(0, V, (4, 256))


def step():
    t = torch.rand(4)
    p_mask = ((1 - 1e-3) * t + 1e-3)[:, None].repeat(1, 256)
    mask = torch.rand(4, 256) < p_mask
    noisy = torch.where(mask, V, x0)
    logits = model(noisy)
    loss = F.cross_entropy(logits[mask], x0[mask], reduction="none") / p_mask[mask]
    loss = loss.sum() / (4 * 256)
    opt.zero_grad()
    loss.backward()
    opt.step()


print(f"train step 4x256: {timeit(step, warmup=2, reps=10):.1f} ms")
