"""Shared Python side of vaxpulse: tweet normalisation, the synthetic tweet generator, and a
TorchScript-friendly CamemBERT sequence classifier whose parameter names match Hugging Face's
`CamembertForSequenceClassification`, so a user's fine-tuned checkpoint loads into it unchanged.

The normaliser here must stay identical to `src/tweet.rs::normalize`; the parity fixture written
by make_demo_model.py checks both sides against each other.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = json.loads((ROOT / "data" / "synthetic_tweets.json").read_text(encoding="utf-8"))

# Same patterns as src/tweet.rs (Python `re` and Rust `regex` agree on these for Unicode text).
_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"@\w+")
_WS = re.compile(r"\s+")
URL_TOKEN = "HTTPURL"
USER_TOKEN = "@user"


def normalize(text: str) -> str:
    """Tweet normalisation used at training and serving time (see src/tweet.rs)."""
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = _URL.sub(URL_TOKEN, text)
    text = _MENTION.sub(USER_TOKEN, text)
    return _WS.sub(" ", text).strip()


def _fill(template: str, rng: random.Random) -> str:
    slots = SYNTHETIC["slots"]
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(slots[m.group(1)]), template)


def synthetic_tweet(rng: random.Random, label: str) -> str:
    """One synthetic French tweet of the given opinion, with the decorations real tweets carry."""
    parts = [rng.choice(SYNTHETIC["openers"]) + _fill(rng.choice(SYNTHETIC["templates"][label]), rng)]
    if rng.random() < 0.3:
        parts.append(_fill(rng.choice(SYNTHETIC["templates"][label]), rng))
    text = " ".join(parts) + rng.choice(SYNTHETIC["closers"])
    if rng.random() < 0.3:
        text = rng.choice(SYNTHETIC["mentions"]) + " " + text
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        text += " " + rng.choice(SYNTHETIC["hashtags"])
    if rng.random() < 0.4:
        text += " " + "".join(rng.choice(SYNTHETIC["emojis"]) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.25:
        text += " " + rng.choice(SYNTHETIC["urls"])
    return text


def synthetic_dataset(n: int, seed: int) -> List[Tuple[str, int]]:
    rng = random.Random(seed)
    labels = SYNTHETIC["labels"]
    out = []
    for _ in range(n):
        y = rng.randrange(len(labels))
        out.append((synthetic_tweet(rng, labels[y]), y))
    return out


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(hidden, hidden)
        self.attention.self.key = nn.Linear(hidden, hidden)
        self.attention.self.value = nn.Linear(hidden, hidden)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(hidden, hidden)
        self.attention.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(hidden, intermediate)
        self.output = nn.Module()
        self.output.dense = nn.Linear(intermediate, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads
        q = self.attention.self.query(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.attention.self.key(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.attention.self.value(x).view(b, t, self.heads, d).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(b, t, h)
        x = self.attention.output.LayerNorm(self.attention.output.dense(a) + x)
        i = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(i) + x)


class CamembertClassifier(nn.Module):
    """RoBERTa/CamemBERT encoder + classification head (post-LN, GELU, learned positions offset
    by the padding index), scriptable with dynamic batch and sequence length."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, intermediate: int,
                 max_positions: int, labels: int, pad_id: int = 1, eps: float = 1e-5):
        super().__init__()
        self.pad_id = pad_id
        self.roberta = nn.Module()
        self.roberta.embeddings = nn.Module()
        e = self.roberta.embeddings
        e.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=pad_id)
        e.position_embeddings = nn.Embedding(max_positions, hidden, padding_idx=pad_id)
        e.token_type_embeddings = nn.Embedding(1, hidden)
        e.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.roberta.encoder = nn.Module()
        self.roberta.encoder.layer = nn.ModuleList(
            [Layer(hidden, heads, intermediate, eps) for _ in range(layers)])
        self.classifier = nn.Module()
        self.classifier.dense = nn.Linear(hidden, hidden)
        self.classifier.out_proj = nn.Linear(hidden, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.roberta.embeddings
        not_pad = input_ids.ne(self.pad_id).to(torch.long)
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_id
        x = e.word_embeddings(input_ids) + e.position_embeddings(positions) \
            + e.token_type_embeddings(torch.zeros_like(input_ids))
        x = e.LayerNorm(x)
        mask = attention_mask.to(torch.bool)[:, None, None, :]
        for layer in self.roberta.encoder.layer:
            x = layer(x, mask)
        cls = x[:, 0, :]
        return self.classifier.out_proj(torch.tanh(self.classifier.dense(cls)))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model: nn.Module, out_dir: Path, tokenizer_json: Path, manifest: Dict,
           vocab: int, max_length: int) -> None:
    """Scripts the model, checks it against eager on several shapes, and writes model.pt,
    tokenizer.json and manifest.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    scripted = torch.jit.script(model)
    path = out_dir / "model.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for b, t in [(1, 3), (4, 17), (7, max_length), (32, 40)]:
            ids = torch.randint(5, vocab, (b, t), generator=gen)
            mask = torch.ones(b, t, dtype=torch.long)
            if t > 4:
                ids[0, t // 2:] = 1
                mask[0, t // 2:] = 0
            diff = (loaded(ids, mask) - model(ids, mask)).abs().max().item()
            assert diff < 1e-4, f"scripted model differs from eager at shape {(b, t)}: {diff}"
    if tokenizer_json.resolve() != (out_dir / "tokenizer.json").resolve():
        (out_dir / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    manifest = dict(manifest)
    manifest["files"] = {
        "model": {"path": "model.pt", "sha256": sha256(path)},
        "tokenizer": {"path": "tokenizer.json", "sha256": sha256(out_dir / "tokenizer.json")},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")


def softmax_list(logits: torch.Tensor) -> List[List[float]]:
    return [[float(x) for x in row] for row in torch.softmax(logits.double(), dim=-1)]


__all__ = ["normalize", "synthetic_dataset", "synthetic_tweet", "CamembertClassifier", "export",
           "sha256", "softmax_list", "SYNTHETIC", "math"]
