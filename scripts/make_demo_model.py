#!/usr/bin/env python3
"""Builds the demo model: a Unigram tokenizer and a small CamemBERT-architecture classifier
(against / neutral / favour) trained on synthetic French vaccination tweets, exported to
TorchScript under models/<name>/<version>/ with a manifest and a Rust/Python parity fixture.

Seeded and reproducible; no downloads. Usage:
    python scripts/make_demo_model.py [--out models] [--name demo] [--version 1]
    python scripts/make_demo_model.py --base-sized --out .state/models   # camembert-base shape,
                                                                          # random weights, for bench
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vaxmodel  # noqa: E402

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
PARITY_TEXTS = [
    "Je viens de recevoir ma deuxième dose, trop content ! #vaccin 💉",
    "Le pass sanitaire est une dictature, réveillez-vous @olivierveran https://t.co/Ab3dE9xYz1",
    "Le centre de vaccination de Lyon ouvre lundi",
    "Quelqu'un sait si la pharmacie de Brest vaccine sans rendez-vous ?",
    "Merci   aux soignants &amp; bravo\n\nla vaccination protège nos aînés 🙏🙏",
    "@Sante_Gouv @ameli_actu Jamais je ne ferai ma troisième dose, aucune confiance",
    "ok",
    "🇫🇷🇫🇷🇫🇷",
    "Texte très long " + " ".join(["vaccination"] * 200),
    "Combien de temps entre deux doses ? www.santé.fr/vaccination",
    "Les labos s'enrichissent sur notre dos avec ce vaccin #NonAuPass 😡",
    "Étude en cours sur la durée de protection des vaccins : ÉTÉ 2021, Œuvre, naïve, ﬁn",
]


def train_tokenizer(texts, vocab_size: int, max_length: int, path: Path) -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.enable_truncation(max_length=max_length)
    tok.save(str(path))
    return tok


def encode(tok: Tokenizer, texts):
    encs = tok.encode_batch([vaxmodel.normalize(t) for t in texts])
    t = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), t), 1, dtype=torch.long)
    mask = torch.zeros((len(encs), t), dtype=torch.long)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def corpus_for_tokenizer(n: int, seed: int):
    """Generic French tweet text for the tokenizer (not only the labelled templates)."""
    rng = random.Random(seed)
    labels = vaxmodel.SYNTHETIC["labels"]
    out = [vaxmodel.normalize(vaxmodel.synthetic_tweet(rng, rng.choice(labels))) for _ in range(n)]
    words = set()
    for section in vaxmodel.SYNTHETIC["slots"].values():
        words.update(section)
    out.extend(sorted(words))
    out.extend(vaxmodel.SYNTHETIC["hashtags"] + vaxmodel.SYNTHETIC["emojis"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(vaxmodel.ROOT / "models"))
    ap.add_argument("--name", default="demo")
    ap.add_argument("--version", default="1")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--base-sized", action="store_true",
                    help="camembert-base shape (12 layers, hidden 768), random weights, no training")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    torch.use_deterministic_algorithms(True)
    max_length = 128
    vocab_size = 4000
    name = "camembert-base-random" if args.base_sized else args.name
    out_dir = Path(args.out) / name / args.version
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = vaxmodel.SYNTHETIC["labels"]

    tok_path = out_dir / "tokenizer.json"
    tok = train_tokenizer(corpus_for_tokenizer(20000, args.seed), vocab_size, max_length, tok_path)
    vocab = tok.get_vocab_size()

    if args.base_sized:
        dims = dict(hidden=768, layers=12, heads=12, intermediate=3072)
        vocab = 32005  # camembert-base's vocabulary size: keeps the embedding cost realistic
    else:
        dims = dict(hidden=128, layers=2, heads=4, intermediate=256)
    model = vaxmodel.CamembertClassifier(vocab=vocab, max_positions=max_length + 2,
                                         labels=len(labels), **dims)

    accuracy = None
    if not args.base_sized:
        train = vaxmodel.synthetic_dataset(12000, args.seed)
        held_out = vaxmodel.synthetic_dataset(2000, args.seed + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        started = time.time()
        batch = 32
        for epoch in range(3):
            model.train()
            order = list(range(len(train)))
            random.Random(args.seed + epoch).shuffle(order)
            total = 0.0
            for start in range(0, len(order), batch):
                rows = [train[i] for i in order[start:start + batch]]
                ids, mask = encode(tok, [r[0] for r in rows])
                y = torch.tensor([r[1] for r in rows])
                loss = torch.nn.functional.cross_entropy(model(ids, mask), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss) * len(rows)
            print(f"epoch {epoch + 1}: train loss {total / len(train):.4f} ({time.time() - started:.0f}s)")
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(held_out), 256):
                rows = held_out[start:start + 256]
                ids, mask = encode(tok, [r[0] for r in rows])
                pred = model(ids, mask).argmax(-1)
                correct += int((pred == torch.tensor([r[1] for r in rows])).sum())
        accuracy = correct / len(held_out)
        print(f"held-out accuracy on {len(held_out)} synthetic tweets (other seed): {accuracy:.4f}")
        assert accuracy > 0.9, "the demo model did not learn the synthetic task"

    manifest = {
        "name": name,
        "version": args.version,
        "labels": labels,
        "max_length": max_length,
        "pad_id": 1,
        "inputs": ["input_ids", "attention_mask"],
        "architecture": dict(kind="camembert-sequence-classification", vocab=vocab,
                             max_positions=max_length + 2, **dims),
        "normalization": "vaxpulse-tweet-v1",
        "trained_on": None if args.base_sized else "synthetic French vaccination tweets (data/synthetic_tweets.json)",
        "held_out_accuracy": accuracy,
        "seed": args.seed,
        "torch": torch.__version__,
    }
    vaxmodel.export(model, out_dir, tok_path, manifest, vocab, max_length)

    if not args.base_sized:
        model.eval()
        with torch.no_grad():
            ids, mask = encode(tok, PARITY_TEXTS)
            probs = vaxmodel.softmax_list(model(ids, mask))
        fixture = {
            "model_dir": f"{name}/{args.version}",
            "cases": [
                {"text": t, "normalized": vaxmodel.normalize(t),
                 "ids": tok.encode(vaxmodel.normalize(t)).ids, "probabilities": p}
                for t, p in zip(PARITY_TEXTS, probs)
            ],
        }
        (out_dir / "parity.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
        check_hf_parity(model, vocab, dims, max_length, len(labels))
    print(f"wrote {out_dir}")


def check_hf_parity(model, vocab, dims, max_length, n_labels) -> None:
    """Loads our weights into Hugging Face's CamembertForSequenceClassification (when transformers
    is installed) and checks the logits agree: the architecture is CamemBERT's, not a look-alike."""
    try:
        from transformers import CamembertConfig, CamembertForSequenceClassification
    except Exception as e:  # pragma: no cover - optional check
        print(f"transformers not importable ({e}); skipped the Hugging Face parity check")
        return
    cfg = CamembertConfig(vocab_size=vocab, hidden_size=dims["hidden"], num_hidden_layers=dims["layers"],
                          num_attention_heads=dims["heads"], intermediate_size=dims["intermediate"],
                          max_position_embeddings=max_length + 2, type_vocab_size=1, pad_token_id=1,
                          bos_token_id=0, eos_token_id=2, num_labels=n_labels, attn_implementation="eager")
    hf = CamembertForSequenceClassification(cfg).eval()
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("position_ids") and not m.endswith("token_type_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    ids = torch.randint(5, vocab, (3, 20), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[1, 12:] = 1
    mask[1, 12:] = 0
    with torch.no_grad():
        diff = (hf(input_ids=ids, attention_mask=mask).logits - model(ids, mask)).abs().max().item()
    print(f"Hugging Face CamembertForSequenceClassification parity: max |Δlogit| = {diff:.2e}")
    assert diff < 1e-4


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
