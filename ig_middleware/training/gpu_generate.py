"""Optional accelerator path for the generation stage of :mod:`build_cost_data` (standalone script).

CPU generation is the default (``build_cost_data.generate``). When a GPU machine is available but cannot
download the model, ``pack`` writes the default model as int8 per-row-quantised chunks (small enough to
copy), and ``run`` (on the GPU machine, needing only torch + transformers, not this package) dequantises
them and samples the same jobs with the same settings, writing ``generations.jsonl`` rows in the format
``build_cost_data`` expects. The script imports nothing from ``ig_middleware`` so it runs anywhere.

    python ig_middleware/training/gpu_generate.py pack --model-dir ~/.cache/ig_middleware/models/smollm2-135m-instruct \
        --jobs jobs.jsonl --out packed/
    python3 ig_middleware/training/gpu_generate.py run --packed packed/ --out generations.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def pack(model_dir: Path, jobs_path: Path, out: Path, chunk_mb: int = 50) -> None:
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(model_dir / "model.safetensors"))
    chunks: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        if t.ndim == 2 and t.numel() > 4096:
            scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
            q = torch.round(t / scale).clamp(-127, 127).to(torch.int8)
            parts = {name + ".q8": q.contiguous(), name + ".scale": scale.to(torch.float32).contiguous()}
        else:
            parts = {name: t.contiguous()}
        nbytes = sum(p.numel() * p.element_size() for p in parts.values())
        if size + nbytes > chunk_mb * 2**20 and chunks[-1]:
            chunks.append({})
            size = 0
        chunks[-1].update(parts)
        size += nbytes
    for i, c in enumerate(chunks):
        (out / f"part{i}").mkdir(exist_ok=True)
        save_file(c, str(out / f"part{i}" / "weights.safetensors"))
    meta = out / "meta"
    meta.mkdir(exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "model.safetensors" and f.is_file():
            shutil.copy(f, meta / f.name)
    shutil.copy(jobs_path, meta / "jobs.jsonl")


def run(
    packed: Path, out_path: Path, max_new_tokens: int, batch_size: int, temperature: float, top_p: float, seed: int
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    state: dict[str, torch.Tensor] = {}
    for part in sorted(packed.glob("part*/weights.safetensors")):
        state.update(load_file(str(part)))
    full = {}
    for name, t in state.items():
        if name.endswith(".q8"):
            base = name[: -len(".q8")]
            full[base] = t.float() * state[base + ".scale"]
        elif not name.endswith(".scale"):
            full[name] = t
    meta = packed / "meta"
    config = AutoConfig.from_pretrained(meta)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(full, strict=False)
    model.tie_weights()
    print("missing", missing, "unexpected", unexpected, file=sys.stderr)
    model = model.to(dev).eval()
    tok = AutoTokenizer.from_pretrained(meta)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    jobs = [json.loads(line) for line in open(meta / "jobs.jsonl", encoding="utf-8")]
    jobs.sort(key=lambda j: len(j["rendered"]))
    torch.manual_seed(seed)
    with open(out_path, "w", encoding="utf-8") as f:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            enc = tok([j["rendered"] for j in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(
                dev
            )
            t0 = time.time()
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    pad_token_id=tok.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            for j, ids in zip(batch, new, strict=True):
                row = {k: v for k, v in j.items() if k != "rendered"}
                text = tok.decode(ids.tolist(), skip_special_tokens=True)
                row["response"] = (j.get("prefill", "") + text).strip()
                row["gen_seconds"] = round(time.time() - t0, 2)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(f"{start + len(batch)}/{len(jobs)}", file=sys.stderr, flush=True)


def embed(model_dir: Path, texts_path: Path, out_path: Path, max_length: int = 256, batch_size: int = 256) -> None:
    """MiniLM embeddings exactly as ``ig_middleware.encoder.MiniLMEncoder`` computes them (mean pooling, L2
    normalisation, left truncation), for a JSON list of texts; saves ``{text: tensor}`` to ``out_path``."""
    from transformers import AutoModel, AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.truncation_side = "left"
    model = AutoModel.from_pretrained(model_dir).float().to(dev).eval()
    if texts_path.suffix == ".jsonl":  # generations: each response and its prefixes (cuts as build_cost_data)
        texts = []
        for line in open(texts_path, encoding="utf-8"):
            words = json.loads(line)["response"].split(" ")
            texts += [" ".join(words)] + [" ".join(words[:c]) for c in (12, 24, 40) if c < len(words) - 4]
        texts = list(dict.fromkeys(texts))
    else:
        texts = json.loads(texts_path.read_text(encoding="utf-8"))
    out = {}
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            enc = tok(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(dev)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            emb = torch.nn.functional.normalize(pooled, dim=-1).float().cpu()
            out.update(zip(chunk, emb, strict=True))
    torch.save(out, out_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--jobs", type=Path, required=True, help="jsonl of jobs with a 'rendered' chat prompt")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--packed", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--max-new-tokens", type=int, default=96)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--temperature", type=float, default=0.8)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("embed")
    e.add_argument("--model-dir", type=Path, required=True)
    e.add_argument("--texts", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "embed":
        embed(a.model_dir, a.texts, a.out)
    elif a.cmd == "pack":
        pack(a.model_dir, a.jobs, a.out)
    else:
        run(a.packed, a.out, a.max_new_tokens, a.batch_size, a.temperature, a.top_p, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
