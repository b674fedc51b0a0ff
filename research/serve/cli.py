"""`scripts/predict.py` and `scripts/generate.py`: an export directory's predictions, or its generated text.

Exit codes: 0 done; 1 the export does not match its manifest (a changed, missing or
unlisted file: the model is refused); 2 bad arguments or inputs (one line naming them).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from research.cli import entry_point, script_parser, stdout_closed
from research.errors import ConfigError, InputError


def parser() -> argparse.ArgumentParser:
  from research.serve.predictor import BACKENDS

  p = script_parser("predict.py", "Predict with an exported model: image files, .npy arrays or texts in, classes "
                    "out.\nReads nothing but the export directory (every file's sha256 is checked first).",
                    "  python scripts/predict.py --export runs/mnist_mlp/export digit.png more.npy\n"
                    "  python scripts/predict.py --export runs/rt/export 'a gripping, funny film' reviews.txt")
  p.add_argument("--export", required=True, metavar="DIR", help="an export directory (scripts/export.py --out)")
  p.add_argument("inputs", nargs="+", metavar="INPUT",
                 help="image files or .npy arrays (image models); texts, or .txt files of one text per line "
                 "(text models)")
  p.add_argument("--backend", default="onnx", choices=sorted(BACKENDS),
                 help="onnx: onnxruntime (default); jax: the StableHLO export, compiled by XLA")
  p.add_argument("--top", type=int, default=1, metavar="K", help="show the K most likely classes (default 1)")
  p.add_argument("--json", action="store_true", help="print one JSON document with every probability")
  return p


def predict(argv: list[str]) -> None:
  args = parser().parse_args(argv)
  if args.top < 1:
    raise ConfigError(f"--top must be >= 1, got {args.top}.")
  from research.serve import inputs as inputs_lib
  from research.serve.predictor import Predictor

  model = Predictor.load(args.export, backend=args.backend)
  names, raw = inputs_lib.read(model.signature, args.inputs)
  result = model.predict(raw)
  if "outputs" in result:
    raise ConfigError(f"{args.export} is not a classifier (outputs {[o['name'] for o in model.manifest['outputs']]}); "
                      f"predict.py prints class predictions.")
  if args.json:
    print(json.dumps({"label_names": result["label_names"], "examples": [
        {"input": n, "prediction": int(p), "label": label, "probabilities": probs.round(6).tolist()}
        for n, p, label, probs in zip(names, result["predictions"], result["labels"], result["probabilities"])]},
        indent=2))
    return
  label = (lambda c: result["label_names"][c]) if result["label_names"] else str
  for name, probs in zip(names, result["probabilities"]):
    best = np.argsort(-probs, kind="stable")[:args.top]
    print(f"{name}\t" + "  ".join(f"{label(c)} {probs[c]:.4f}" for c in best))


def generate_parser() -> argparse.ArgumentParser:
  p = script_parser("generate.py", "Generate text with an exported language model (a KV cache; past the model's "
                    "context the window slides).\nReads nothing but the export directory; a seed gives the same "
                    "text every time.",
                    "  python scripts/generate.py --export runs/shakespeare_gpt/export --prompt 'ROMEO:' "
                    "--max_tokens 200 --temperature 0.8 --top_k 40 --seed 0")
  p.add_argument("--export", required=True, metavar="DIR", help="the export directory of a language model")
  p.add_argument("--prompt", required=True, help="the text to continue")
  p.add_argument("--max_tokens", type=int, default=200, metavar="N", help="tokens (bytes) to generate (default 200)")
  p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 is greedy (default 1.0)")
  p.add_argument("--top_k", type=int, default=0, metavar="K", help="sample from the K most likely (0: all; default)")
  p.add_argument("--seed", type=int, default=0, metavar="S", help="the sampling seed (default 0)")
  return p


def generate(argv: list[str]) -> None:
  args = generate_parser().parse_args(argv)
  from research.serve.generate import Generator, check_request

  check_request(args.prompt, args.max_tokens, args.temperature, args.top_k, args.seed)  # before loading
  model = Generator.load(args.export)
  sys.stdout.write(args.prompt)
  model.generate(args.prompt, args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                 on_text=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
  sys.stdout.write("\n")


def main(argv: list[str], command: str = "predict") -> int:
  from research.export.manifest import VerifyError

  try:
    with entry_point(argv, None):
      (generate if command == "generate" else predict)(argv)
    return 0
  except (ConfigError, InputError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except VerifyError as e:
    print(f"error: {' '.join(str(e).split())} (the model is refused)", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return 130
  except BrokenPipeError:  # e.g. `predict.py ... | head`
    return stdout_closed()
