#!/usr/bin/env python3
"""Exports a local Hugging Face CamembertForSequenceClassification checkpoint (as written by
`save_pretrained`) into a vaxpulse model directory, and checks it.

Usage: export_model.py CHECKPOINT_DIR --out models/NAME/VERSION [--labels against,neutral,favour]
                       [--max-length N] [--vaxpulse PATH]

Writes model.pt (TorchScript, dynamic batch and length: the checkpoint's weights in
vaxmodel.CamembertClassifier, CamemBERT's architecture under Hugging Face parameter names),
tokenizer.json (the checkpoint's fast tokenizer, or — a checkpoint with only the slow
tokenizer's sentencepiece.bpe.model — one converted from it and checked against SentencePiece), parity.json (sample tweets, transformers' own
probabilities) and manifest.json (labels in the checkpoint's order mapped onto
against/neutral/favour, max_length, pad id, sha256 of every file, the source checkpoint's hash).
Then it runs `vaxpulse models check OUT`, which loads the export through the worker's own Rust
path and compares its probabilities with transformers' within 1e-4; the export fails otherwise
(and the half-written directory is removed). No download: everything comes from CHECKPOINT_DIR.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vaxmodel import sha256  # noqa: E402  (the same file hashes as the demo model's manifest)

CANONICAL = ("against", "neutral", "favour")
# Names a checkpoint may give each class, lower-cased.
SYNONYMS = {
    "against": {"against", "anti", "anti-vax", "antivax", "con", "contre", "negative", "neg",
                "defavorable", "défavorable", "opposed", "oppose"},
    "neutral": {"neutral", "neutre", "none", "neu", "neither", "other", "autre"},
    "favour": {"favour", "favor", "pro", "pro-vax", "provax", "pour", "positive", "pos",
               "favorable", "in favour", "in favor", "support"},
}
SAMPLES = [
    "Je viens de recevoir ma deuxième dose, trop content ! #vaccin",
    "Le pass sanitaire est une honte, je ne me ferai jamais vacciner.",
    "Le centre de vaccination de Lyon ouvre lundi à 9h.",
    "@ministre merci pour la campagne de rappel, enfin !",
    "Effets secondaires du vaccin : on ne nous dit pas tout https://t.co/xyz",
    "Rendez-vous pris pour la 3e dose demain matin",
    "Encore une étude sur l'efficacité des vaccins contre le variant",
    "Non à l'obligation vaccinale des soignants !!!",
    "La HAS recommande le rappel pour les plus de 65 ans.",
    "Vaccin " + "très " * 200 + "long",
]


class ExportError(Exception):
    """A problem with the checkpoint or the arguments; the message says what to do."""


def read_config(ckpt: Path) -> dict:
    path = ckpt / "config.json"
    if not path.is_file():
        raise ExportError(f"{ckpt} has no config.json: give the directory written by save_pretrained")
    cfg = json.loads(path.read_text(encoding="utf-8"))
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    if model_type != "camembert":
        raise ExportError(
            f"unsupported architecture: model_type {model_type!r} ({', '.join(archs) or 'no architectures'}); "
            "vaxpulse serves CamemBERT (model_type 'camembert') sequence classifiers")
    if "CamembertForSequenceClassification" not in archs:
        raise ExportError(
            f"not a sequence classifier: architectures {archs}; fine-tune "
            "CamembertForSequenceClassification and save it with save_pretrained")
    # Any type_vocab_size: a single-text classifier only ever uses token type 0 (transformers'
    # default config from scratch has 2); the export keeps row 0 of the table.
    for key, want in [("hidden_act", "gelu"), ("position_embedding_type", "absolute")]:
        if cfg.get(key, want) != want:
            raise ExportError(f"unsupported architecture: {key} = {cfg.get(key)!r} (supported: {want!r})")
    return cfg


def map_labels(cfg: dict, given: str | None) -> list:
    n = int(cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 0)
    if given:
        names = [x.strip() for x in given.split(",")]
        if len(names) != n:
            raise ExportError(f"--labels names {len(names)} classes, the checkpoint has {n}")
    else:
        id2label = cfg.get("id2label") or {}
        names = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(n)]
    if n != len(CANONICAL):
        raise ExportError(f"the checkpoint has {n} classes; vaxpulse classifies into {len(CANONICAL)}: "
                          f"{', '.join(CANONICAL)}")
    mapped = []
    for i, name in enumerate(names):
        hit = [c for c, syn in SYNONYMS.items() if str(name).strip().lower() in syn]
        if len(hit) != 1:
            raise ExportError(
                f"cannot map class {i} ({name!r}) onto {'/'.join(CANONICAL)}; pass --labels with "
                f"the checkpoint's classes in index order, e.g. --labels favour,against,neutral")
        mapped.append(hit[0])
    if sorted(mapped) != sorted(CANONICAL):
        raise ExportError(f"the classes {names} map to {mapped}: each of {', '.join(CANONICAL)} must appear once")
    return mapped


def convert_sentencepiece(ckpt: Path, dest: Path) -> str:
    """Writes dest/tokenizer.json converted from ckpt's sentencepiece.bpe.model (the slow
    CamemBERT tokenizer a 2020 fine-tune ships) with transformers' own CamembertConverter, then
    checks it against SentencePiece itself with fairseq's id layout (4 specials first, so piece k
    is id k + 4; <s> and </s> around the text). Unigram decoding may break an exact tie between
    two equally scored segmentations differently: such a text counts as agreeing when both
    segmentations spell the same string with the same total score. Returns a one-line summary."""
    spm_file = ckpt / "sentencepiece.bpe.model"
    try:
        import sentencepiece
        import google.protobuf  # noqa: F401  (the converter parses the model with it)
        from transformers.convert_slow_tokenizer import CamembertConverter
    except ImportError as e:
        raise ExportError(f"converting {spm_file.name} needs the sentencepiece and protobuf packages ({e}); "
                          "scripts/setup.sh installs them in the project's venv")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    from transformers.convert_slow_tokenizer import import_protobuf
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(spm_file.read_bytes())
    if proto.trainer_spec.model_type != 1:
        raise ExportError(f"{spm_file.name} is a SentencePiece model of type {proto.trainer_spec.model_type} "
                          "(CamemBERT's is unigram, type 1): convert it to tokenizer.json yourself and put it "
                          "next to config.json")
    fixed = {"<s>NOTUSED": 0, "<pad>": 1, "</s>NOTUSED": 2, "<unk>": 3}

    class Slow:  # what the converter reads of the slow tokenizer
        vocab_file = str(spm_file)

        @staticmethod
        def convert_tokens_to_ids(t):
            return fixed[t] if t in fixed else sp.piece_to_id(t) + 4

    tok = CamembertConverter(Slow()).converted()
    from vaxmodel import normalize
    texts = [normalize(t) for t in SAMPLES]
    extra = Path(__file__).resolve().parent.parent / "data/heldout_synthetic.jsonl"
    if extra.is_file():
        texts += [normalize(json.loads(line)["text"]) for line in extra.read_text(encoding="utf-8").splitlines()[:300]]
    exact = ties = 0
    # fairseq's ids: SentencePiece's <unk> (piece 0) is id 3, every other piece k is k + 4.
    to_id = lambda k: 3 if k == 0 else k + 4  # noqa: E731
    to_piece = lambda i: 0 if i == 3 else i - 4  # noqa: E731
    score = lambda ids: sum(sp.get_score(to_piece(i)) for i in ids)  # noqa: E731
    spelled = lambda ids: "".join(sp.id_to_piece(to_piece(i)) for i in ids)  # noqa: E731
    for text in texts:
        ours = tok.encode(text).ids
        ref = [to_id(sp.piece_to_id("<s>"))] + [to_id(k) for k in sp.encode(text)] + [to_id(sp.piece_to_id("</s>"))]
        if ours == ref:
            exact += 1
            continue
        inner_ok = all(3 <= i < 4 + sp.get_piece_size() for i in ours[1:-1])
        if inner_ok and spelled(ours[1:-1]) == spelled(ref[1:-1]) \
                and abs(score(ours[1:-1]) - score(ref[1:-1])) < 1e-4:
            ties += 1
            continue
        raise ExportError(f"the converted tokenizer disagrees with SentencePiece on {text[:60]!r}: "
                          f"{ours[:12]}… vs {ref[:12]}…")
    tok.save(str(dest / "tokenizer.json"))
    return (f"converted {spm_file.name} ({sp.get_piece_size()} pieces) to tokenizer.json: same ids as "
            f"SentencePiece on {exact}/{len(texts)} texts, an equally scored tie on {ties}")


def reference_tokenizer(ckpt: Path, tok_file: Path, converted: bool):
    """The tokenizer the reference probabilities are computed with: the checkpoint's own, or
    (converted) the fast tokenizer just written, with CamemBERT's special tokens."""
    if not converted:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=str(tok_file), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def load_weights(ckpt: Path) -> tuple:
    import torch
    st = ckpt / "model.safetensors"
    bin_ = ckpt / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file
        return load_file(str(st)), st
    if bin_.is_file():
        return torch.load(str(bin_), map_location="cpu", weights_only=True), bin_
    raise ExportError(f"{ckpt} has neither model.safetensors nor pytorch_model.bin")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="models/NAME/VERSION")
    ap.add_argument("--labels", help="the checkpoint's classes in index order, as against/neutral/favour")
    ap.add_argument("--max-length", type=int, help="token limit (default: what the position table allows)")
    ap.add_argument("--vaxpulse", default=os.environ.get("VAXPULSE_BIN", str(HERE.parent / "target/release/vaxpulse")),
                    help="the vaxpulse binary that checks the export (default: target/release/vaxpulse)")
    args = ap.parse_args(argv)
    try:
        export(args)
    except ExportError as e:
        print(f"export_model: {e}", file=sys.stderr)
        return 2
    return 0


def export(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="vaxpulse-export-"))
    try:
        export_with(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_with(args, work: Path) -> None:
    ckpt, out = args.checkpoint, args.out
    if not ckpt.is_dir():
        raise ExportError(f"{ckpt} is not a directory")
    cfg = read_config(ckpt)
    labels = map_labels(cfg, args.labels)
    if len(out.parts) < 2:
        raise ExportError(f"--out {out}: use models/NAME/VERSION")
    name, version = out.parts[-2], out.parts[-1]
    tok_file = ckpt / "tokenizer.json"
    converted = False
    if not tok_file.is_file():
        if not (ckpt / "sentencepiece.bpe.model").is_file():
            raise ExportError(f"missing tokenizer files: {ckpt} has neither tokenizer.json nor sentencepiece.bpe.model "
                              "(save the tokenizer with tokenizer.save_pretrained(dir) next to the weights)")
        print(f"export_model: {convert_sentencepiece(ckpt, work)}")
        tok_file, converted = work / "tokenizer.json", True

    import torch
    from transformers import CamembertForSequenceClassification
    from vaxmodel import CamembertClassifier, normalize
    from vaxmodel import export as export_version

    state, weights_file = load_weights(ckpt)
    pad_id = int(cfg.get("pad_token_id", 1))
    max_positions = int(cfg["max_position_embeddings"])
    limit = max_positions - pad_id - 1
    max_length = args.max_length or limit
    if not 2 <= max_length <= limit:
        raise ExportError(f"--max-length {max_length}: the position table allows 2..{limit}")
    model = CamembertClassifier(
        vocab=int(cfg["vocab_size"]), hidden=int(cfg["hidden_size"]), layers=int(cfg["num_hidden_layers"]),
        heads=int(cfg["num_attention_heads"]), intermediate=int(cfg["intermediate_size"]),
        max_positions=max_positions, labels=len(labels), pad_id=pad_id,
        eps=float(cfg.get("layer_norm_eps", 1e-5))).eval()
    ours = model.state_dict()
    state = {k: v for k, v in state.items() if k in ours}
    tt = "roberta.embeddings.token_type_embeddings.weight"
    if tt in state and state[tt].shape[0] > 1:
        state[tt] = state[tt][:1].clone()
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ExportError(f"unsupported architecture: weights missing for {missing[:5]}")
    model.load_state_dict(state, strict=True)

    tok = reference_tokenizer(ckpt, tok_file, converted)
    if len(tok) > int(cfg["vocab_size"]):
        raise ExportError(f"the tokenizer has {len(tok)} tokens but the model's vocab_size is {cfg['vocab_size']}: "
                          "the tokenizer files do not belong to these weights")
    hf = CamembertForSequenceClassification.from_pretrained(
        str(ckpt), local_files_only=True, attn_implementation="eager").eval()
    texts = [normalize(t) for t in SAMPLES]
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        reference = torch.softmax(hf(**enc).logits.double(), dim=-1)
        mine = torch.softmax(model(enc["input_ids"], enc["attention_mask"]).double(), dim=-1)
    py_diff = (reference - mine).abs().max().item()
    if py_diff > 1e-4:
        raise ExportError(f"unsupported architecture: the rebuilt model differs from transformers' by {py_diff:.2e}")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = {
            "name": name, "version": version, "labels": labels, "max_length": max_length, "pad_id": pad_id,
            "inputs": ["input_ids", "attention_mask"],
            "architecture": {"kind": "camembert-sequence-classification", "vocab": cfg["vocab_size"],
                             "max_positions": max_positions, "hidden": cfg["hidden_size"],
                             "layers": cfg["num_hidden_layers"], "heads": cfg["num_attention_heads"],
                             "intermediate": cfg["intermediate_size"]},
            "normalization": "vaxpulse-tweet-v1",
            "source": {"checkpoint": str(ckpt.resolve()), "weights": weights_file.name,
                       "weights_sha256": sha256(weights_file), "config_sha256": sha256(ckpt / "config.json"),
                       "id2label": cfg.get("id2label")},
            "torch": torch.__version__,
        }
        # model.pt (scripted and checked against the eager module), tokenizer.json, manifest.json
        # with both files' hashes: the same writer as every other model version.
        export_version(model, tmp, tok_file, manifest, vocab=int(cfg["vocab_size"]), max_length=max_length)
        cases = []
        for text, norm, ids, mask, p in zip(SAMPLES, texts, enc["input_ids"], enc["attention_mask"], reference):
            cases.append({"text": text, "normalized": norm,
                          "ids": [int(i) for i, m in zip(ids, mask) if m],
                          "probabilities": [float(x) for x in p]})
        (tmp / "parity.json").write_text(json.dumps({"model_dir": f"{name}/{version}", "reference": "transformers",
                                                     "cases": cases}, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        print(f"export_model: {ckpt} -> {out}: labels {labels} (checkpoint order), max_length {max_length}, "
              f"pad id {pad_id}; rebuilt vs transformers in Python: max |Δp| = {py_diff:.2e}")
        check = subprocess.run([args.vaxpulse, "models", "check", str(tmp)], capture_output=True, text=True)
        sys.stdout.write(check.stdout)
        if check.returncode != 0:
            raise ExportError(f"the Rust serving path disagrees with transformers:\n{check.stdout}{check.stderr}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"export_model: wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
