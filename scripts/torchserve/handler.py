"""TorchServe handler for the baseline (the seed's architecture): the same TorchScript model,
tokenizer and normalisation as the vaxpulse worker, batched by TorchServe's own
`batch_size` / `max_batch_delay`. Each request body is one tweet as JSON: {"text": "..."}.
"""
import json
import os
import re

import torch
from tokenizers import Tokenizer
from ts.torch_handler.base_handler import BaseHandler

# Must match src/tweet.rs::normalize (and scripts/vaxmodel.py, which cannot be imported from a
# model archive: it reads the repository's data files at import).
_URL = re.compile(r"(?:https?://|www\.)\S+")
_MENTION = re.compile(r"@\w+")
_WS = re.compile(r"\s+")


def normalize(text):
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _WS.sub(" ", _MENTION.sub("@user", _URL.sub("HTTPURL", text))).strip()


class VaxpulseHandler(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.labels = self.manifest["labels"]
        self.pad_id = self.manifest["pad_id"]
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.enable_truncation(self.manifest["max_length"])
        torch.set_num_threads(int(os.environ.get("VAXPULSE_TS_THREADS", "1")))
        self.model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
        self.initialized = True

    def handle(self, data, context):
        texts = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            texts.append(normalize(body["text"]))
        encs = self.tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), longest), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
        with torch.inference_mode():
            probs = torch.softmax(self.model(ids, mask).float(), dim=-1).tolist()
        out = []
        for p in probs:
            best = max(range(len(p)), key=p.__getitem__)
            out.append({"label": self.labels[best], "scores": dict(zip(self.labels, p))})
        return out
