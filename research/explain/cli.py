"""`scripts/explain.py`'s flags (parsed before JAX is imported, so --help is quick)."""

from __future__ import annotations

from pathlib import Path

from research.cli import Parser, check_workdir, parse_step, script_parser
from research.errors import ConfigError

METHODS = ("gausslegendre", "trapezoid")  # research/explain/attribution.py (not imported here: it imports JAX)


def parser() -> Parser:
  p = script_parser(
      "explain.py", "Show what a trained model looks at: integrated gradients and saliency over images, token\n"
      "attributions of texts, attention maps per layer and head (Transformer, GPT).",
      "Writes into WORKDIR/explain (or --out):\n"
      "  image classifier: <example>.png (input | integrated gradients | saliency), tensorboard/ (the same images),\n"
      "                    attributions.npz, summary.json\n"
      "  text classifier:  tokens.html (highlighted tokens), tensorboard/ (text), summary.json,\n"
      "                    and for a Transformer attention/<example>/layer<i>.png, attention.npy, tokens.json\n"
      "  language model:   attention/<example>/layer<i>.png, attention.npy, tokens.json\n\n"
      "  python scripts/explain.py --workdir runs/mnist_cnn --misclassified 4\n"
      "  python scripts/explain.py --workdir runs/mnist_cnn --inputs digit.png\n"
      "  python scripts/explain.py --workdir runs/rotten_tomatoes_transformer --inputs 'a gripping, funny film'\n"
      "  python scripts/explain.py --workdir runs/shakespeare_gpt --inputs 'ROMEO: But soft, what light'")
  p.add_argument("--workdir", required=True, metavar="DIR", help="the training run's workdir (config.json, "
                 "checkpoints/)")
  p.add_argument("--inputs", nargs="+", default=[], metavar="INPUT",
                 help="image files or .npy arrays (image models, raw pixels as the dataset holds them); texts, or "
                 ".txt files of one text per line (text models)")
  p.add_argument("--misclassified", type=int, default=0, metavar="N",
                 help="explain the first N misclassified examples of the test split instead of --inputs")
  p.add_argument("--step", default="latest", metavar="STEP", help="which checkpoint: latest (default), best, or a "
                 "step number")
  p.add_argument("--out", default=None, metavar="DIR", help="where to write (default WORKDIR/explain)")
  p.add_argument("--steps", type=int, default=64, metavar="N",
                 help="integrated gradients: points on the path (default 64; doubled, up to 1024, for an example "
                 "whose attributions miss f(x) - f(baseline) by more than 1%%)")
  p.add_argument("--method", default="gausslegendre", choices=METHODS,
                 help="integrated gradients: the integration rule (default gausslegendre)")
  p.add_argument("--batch_points", type=int, default=512, metavar="N",
                 help="integrated gradients: inputs per compiled call, examples times path points (default 512)")
  return p


def explain(argv: list[str]) -> None:
  args = parser().parse_args(argv)
  step = parse_step(args.step)
  check_workdir(args.workdir)
  if args.misclassified < 0 or args.steps < 2 or args.batch_points < 1:
    raise ConfigError("--misclassified must be >= 0, --steps >= 2 and --batch_points >= 1.")
  from research.explain.run import explain as run

  written = run(args.workdir, inputs=args.inputs, misclassified=args.misclassified, step=step, out=args.out,
                steps=args.steps, method=args.method, batch_points=args.batch_points)
  print(f"wrote {len(written)} files under {args.out or Path(args.workdir) / 'explain'}")
