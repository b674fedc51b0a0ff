"""What a built API reference (docs/conf.py, docs/index.md, docs/api/) must hold.

tests/test_docs_commands.py runs docs/development.md's Sphinx command (warnings as errors) and then
`check_site` on what it built. A docstring that stops being valid reST, a module that no longer
imports, or a page that points at a renamed module fails the build; a page that silently lost its
content (e.g. an `__all__` that hides everything) fails the checks below: every module documented with `:members:` must show at least one member, and a few
objects that users reuse by name must be on their pages.
"""

import re

from tests import helpers

DOCS = helpers.ROOT / "docs"

# Objects that must stay documented, by page.
NAMED = {
    "api/config.html": ["research.config.defaults", "research.config.load", "research.config.apply_overrides"],
    "api/registry.html": ["research.registry.Registry", "research.registry.MODELS"],
    "api/models.html": ["research.models.mlp.MLP", "research.models.gpt.GPT", "research.models.vae.VAE"],
    "api/layers.html": ["research.models.layers.attention.MultiHeadAttention", "research.models.layers.conv.ConvBN"],
    "api/losses.html": ["research.losses.softmax_cross_entropy"],
    "api/metrics.html": ["research.metrics.summarize", "research.metrics.bleu"],
    "api/data.html": ["research.data.pipeline.Pipeline", "research.data.ops.normalize"],
    "api/train.html": ["research.train.state.TrainState", "research.train.loop.train"],
    "api/checkpoint.html": ["research.checkpoint.Checkpointer"],
    "api/export.html": ["research.export.api.export", "research.export.manifest.verify"],
    "api/serve.html": ["research.serve.predictor.Predictor", "research.serve.inputs.check"],
    "api/runs.html": ["research.runs.read", "research.hparams.record_run", "research.sweep.plan.make"],
    "api/explain.html": ["research.explain.run.explain", "research.explain.attribution.integrated_gradients",
                         "research.explain.attention.attention_maps"],
}


def automodules_with_members() -> dict[str, list[str]]:
  """{page: [module, ...]} for every `.. automodule::` in docs/api/ that lists its `:members:`."""
  pages = {}
  for source in sorted((DOCS / "api").glob("*.rst")):
    found = re.findall(r"^\.\. automodule:: (\S+)\n((?:   :.*\n)*)", source.read_text(), re.M)
    pages[f"api/{source.stem}.html"] = [module for module, options in found if ":members:" in options]
  return pages


def check_site(out) -> None:
  """The Sphinx site built into `out` documents every module and the named objects."""
  assert "api/metrics" in (out / "index.html").read_text(), "index.html lost its table of contents"
  pages = automodules_with_members()
  assert set(NAMED) <= set(pages), f"pages missing from docs/api/: {sorted(set(NAMED) - set(pages))}"
  for page, modules in pages.items():
    html = (out / page).read_text()
    for module in modules:
      assert f'id="module-{module}"' in html, f"{page} does not document the module {module}"
      assert re.search(rf'<dt class="sig sig-object py" id="{re.escape(module)}\.', html), (
          f"{page} documents no member of {module}")
    for name in NAMED.get(page, []):
      assert f'id="{name}"' in html, f"{page} no longer documents {name}"
