#!/usr/bin/env python3
"""Writes a dynamic-int8 version of a vaxpulse model directory, for CPU serving.

Usage: quantize_model.py models/NAME/VERSION [--out models/NAME/VERSION-int8] [--vaxpulse PATH]

The fp32 TorchScript's weights are loaded into vaxmodel.CamembertClassifier (the architecture in
the manifest), every nn.Linear is quantised dynamically to int8 (torch.ao.quantization
.quantize_dynamic: int8 weights, activations quantised per batch at run time; embeddings and
LayerNorms stay fp32), and the result is scripted into OUT as its own model version: its own
model.pt and sha256 (so its predictions are a series of their own in ClickHouse, and it can run
as a shadow of the fp32 version), the same tokenizer, and the fp32 version's parity.json as the
reference. The manifest records `quantization: {kind: dynamic-int8, from: NAME@VERSION#HASH}`;
the worker then checks it at load against that reference with model.int8_parity_max_abs_diff and
model.int8_min_label_agreement instead of the fp32 bound. Then it runs `vaxpulse models check OUT`
(the worker's own loading path) and removes OUT if that fails.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from vaxmodel import CamembertClassifier, export  # noqa: E402


SAMPLES = [
    "Je viens de recevoir ma deuxième dose, trop content ! #vaccin",
    "Le pass sanitaire est une honte, je ne me ferai jamais vacciner.",
    "Le centre de vaccination de Lyon ouvre lundi à 9h.",
    "Effets secondaires du vaccin : on ne nous dit pas tout https://t.co/xyz",
    "Rendez-vous pris pour la 3e dose demain matin",
    "Non à l'obligation vaccinale des soignants !!!",
    "La HAS recommande le rappel pour les plus de 65 ans.",
    "Vaccin " + "très " * 60 + "long",
]


def padded(rows, pad: int):
    """(input_ids, attention_mask) of token-id rows, right-padded with `pad` as the worker does."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def fp32_reference(model, src: Path, manifest: dict) -> dict:
    """A parity reference from the fp32 module itself, for a source without parity.json (its
    tokenizer and normalisation, as the worker applies them)."""
    from tokenizers import Tokenizer
    from vaxmodel import normalize, softmax_list
    tok = Tokenizer.from_file(str(src / manifest["files"]["tokenizer"]["path"]))
    limit = int(manifest["max_length"])
    ids = [tok.encode(normalize(t)).ids[:limit] for t in SAMPLES]
    x, m = padded(ids, int(manifest.get("pad_id", 1)))
    with torch.no_grad():
        probs = softmax_list(model(x, m))
    return {"model_dir": str(src), "reference": "fp32 (written by quantize_model.py)",
            "cases": [{"text": t, "normalized": normalize(t), "ids": i, "probabilities": p}
                      for t, i, p in zip(SAMPLES, ids, probs)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="models/NAME/VERSION (fp32)")
    ap.add_argument("--out", type=Path, help="default: SRC-int8 beside SRC")
    ap.add_argument("--vaxpulse", default=os.environ.get("VAXPULSE_BIN", str(HERE.parent / "target/release/vaxpulse")),
                    help="the vaxpulse binary that checks the result")
    args = ap.parse_args()
    src: Path = args.src
    manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("quantization"):
        sys.exit(f"quantize_model: {src} is already quantised ({manifest['quantization']})")
    arch = manifest.get("architecture") or {}
    if arch.get("kind") != "camembert-sequence-classification":
        sys.exit(f"quantize_model: {src}/manifest.json has no camembert-sequence-classification architecture")
    out: Path = args.out or src.with_name(src.name + "-int8")
    if out.exists():
        sys.exit(f"quantize_model: {out} exists; remove it or choose --out")

    torch.manual_seed(0)
    fp32 = torch.jit.load(str(src / manifest["files"]["model"]["path"]), map_location="cpu")
    model = CamembertClassifier(
        vocab=int(arch["vocab"]), hidden=int(arch["hidden"]), layers=int(arch["layers"]),
        heads=int(arch["heads"]), intermediate=int(arch["intermediate"]),
        max_positions=int(arch["max_positions"]), labels=len(manifest["labels"]),
        pad_id=int(manifest.get("pad_id", 1))).eval()
    model.load_state_dict(fp32.state_dict(), strict=True)
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).eval()

    if (src / "parity.json").is_file():
        parity = json.loads((src / "parity.json").read_text(encoding="utf-8"))
    else:
        parity = fp32_reference(model, src, manifest)
    cases = parity["cases"]
    ids, mask = padded([c["ids"] for c in cases], int(manifest.get("pad_id", 1)))
    with torch.no_grad():
        p32 = torch.softmax(model(ids, mask).double(), dim=-1)
        p8 = torch.softmax(q(ids, mask).double(), dim=-1)
    diff = (p32 - p8).abs().max().item()
    same = int((p32.argmax(-1) == p8.argmax(-1)).sum())

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        new = dict(manifest)
        new["version"] = out.name
        new["quantization"] = {
            "kind": "dynamic-int8",
            "from": f"{manifest['name']}@{manifest['version']}#{manifest['files']['model']['sha256'][:12]}",
            "python_parity_max_abs_diff": diff,
            "python_parity_same_label": f"{same}/{len(cases)}",
        }
        new["torch"] = torch.__version__
        # model.pt (scripted and checked against the eager module), tokenizer.json, manifest.json
        # with both files' hashes: the same writer as every other model version.
        export(q, tmp, src / manifest["files"]["tokenizer"]["path"], new,
               vocab=int(arch["vocab"]), max_length=int(manifest["max_length"]))
        parity["model_dir"] = f"{manifest['name']}/{out.name}"
        parity["reference"] = f"{parity.get('reference', 'fp32')} (of {src.name}, fp32)"
        (tmp / "parity.json").write_text(json.dumps(parity, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"quantize_model: {src} -> {out}: dynamic int8 Linear layers; on {len(cases)} parity texts "
              f"max |Δp| vs fp32 = {diff:.2e}, same label {same}/{len(cases)}; "
              f"model.pt {os.path.getsize(src / 'model.pt') / 1e6:.1f} MB -> {os.path.getsize(tmp / 'model.pt') / 1e6:.1f} MB")
        check = subprocess.run([args.vaxpulse, "models", "check", str(tmp)], capture_output=True, text=True)
        sys.stdout.write(check.stdout)
        if check.returncode != 0:
            sys.stderr.write(check.stderr)
            raise SystemExit(f"quantize_model: `vaxpulse models check` refused {tmp}; nothing written to {out}")
        tmp.rename(out)
        print(f"quantize_model: wrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
