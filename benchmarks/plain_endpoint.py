"""The plain FastAPI endpoint that ``serve_load.py`` measures ``deepworks serve`` against: what a
competent user writes by hand to serve an image run. One PNG upload per request in the form field
``file``, decoded with PIL, preprocessed as the run was trained (its per-channel mean/std from
``data.json``), the model at batch 1 in torch under ``torch.inference_mode()``, a JSON answer with the
predicted class and every class's probability.

    DEEPWORKS_PLAIN_RUN=runs/fashion python -m uvicorn benchmarks.plain_endpoint:app --port 8001 --workers 1

``DEEPWORKS_PLAIN_RUN``: the run directory (required); ``DEEPWORKS_PLAIN_DEVICE``: where the model
runs (``cpu`` by default). The run's best weights are loaded with ``deepworks.load_run`` (the model
as an ``nn.Module``); everything after that is plain PyTorch.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

import deepworks

RUN_DIR = Path(os.environ["DEEPWORKS_PLAIN_RUN"])
DEVICE = torch.device(os.environ.get("DEEPWORKS_PLAIN_DEVICE", "cpu"))

run = deepworks.load_run(RUN_DIR)
model = run.model.to(DEVICE).eval()
classes = list(run.classes)
info = json.loads((RUN_DIR / "data.json").read_text())
channels, height, width = info["input_shape"]
mean = torch.tensor(info["mean"], dtype=torch.float32).view(1, channels, 1, 1)
std = torch.tensor(info["std"], dtype=torch.float32).view(1, channels, 1, 1)

app = FastAPI(title="plain endpoint")


def preprocess(data: bytes) -> torch.Tensor:
    try:
        image = Image.open(io.BytesIO(data))
        image = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise HTTPException(400, f"not an image: {exc}") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(pixels).reshape(height, width, channels).permute(2, 0, 1).unsqueeze(0)
    return (x - mean) / std


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}


@app.post("/predict")
async def predict(file: UploadFile = File(...)) -> dict:
    x = preprocess(await file.read())
    with torch.inference_mode():
        probs = torch.softmax(model(x.to(DEVICE)), dim=1)[0].cpu()
    best = int(probs.argmax())
    return {"prediction": classes[best], "probabilities": dict(zip(classes, probs.tolist()))}
