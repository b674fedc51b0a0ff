"""Pictures and pages of explanations: heat-map overlays and attention grids (PNG, drawn with Pillow), token
attributions as highlighted HTML and as a Markdown table for TensorBoard's text dashboard."""

from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POSITIVE, NEGATIVE = np.array([220, 30, 30]), np.array([30, 80, 220])  # red: for the class, blue: against
HOT = np.array([[0, 0, 0], [200, 0, 0], [255, 200, 0], [255, 255, 255]], np.float64)  # |gradient|: dark to bright
SCALE = 8  # a 28x28 digit becomes 224x224


def _font(size: int = 13):
  return ImageFont.load_default(size=size)


def _grayscale(image: np.ndarray) -> np.ndarray:
  """uint8[H, W, C] (C = 1 or 3) as float RGB [H, W, 3] in [0, 1], faded so colors show on it."""
  rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
  gray = rgb.astype(np.float64).mean(-1, keepdims=True) / 255.0
  return np.repeat(0.25 + 0.5 * gray, 3, axis=-1)


def signed_overlay(image: np.ndarray, heat: np.ndarray) -> Image.Image:
  """`heat` float[H, W] over uint8 image [H, W, C]: red where positive, blue where negative, opacity by magnitude
  (scaled by the largest magnitude)."""
  scale = np.abs(heat).max() or 1.0
  strength = np.clip(np.abs(heat) / scale, 0, 1)[..., None]
  color = np.where(heat[..., None] >= 0, POSITIVE, NEGATIVE) / 255.0
  mixed = (1 - strength) * _grayscale(image) + strength * color
  return _upscaled(mixed)


def magnitude_overlay(image: np.ndarray, heat: np.ndarray) -> Image.Image:
  """`heat` float[H, W] >= 0 over the image in a black-red-yellow-white scale, opacity by magnitude."""
  strength = np.clip(heat / (heat.max() or 1.0), 0, 1)
  position = strength * (len(HOT) - 1)
  low = np.minimum(position.astype(int), len(HOT) - 2)
  color = (HOT[low] + (position - low)[..., None] * (HOT[low + 1] - HOT[low])) / 255.0
  mixed = (1 - strength[..., None]) * _grayscale(image) + strength[..., None] * color
  return _upscaled(mixed)


def _upscaled(rgb: np.ndarray) -> Image.Image:
  pixels = np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
  return Image.fromarray(pixels).resize((pixels.shape[1] * SCALE, pixels.shape[0] * SCALE), Image.NEAREST)


def image_panel(title: str, panels: list[tuple[str, Image.Image]]) -> Image.Image:
  """Images side by side, each captioned below, under a title."""
  font, pad = _font(), 8
  line = int(font.getbbox("Hg")[3]) + 4
  width = sum(p.width for _, p in panels) + pad * (len(panels) + 1)
  height = max(p.height for _, p in panels) + 2 * line + 3 * pad
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  width = max(width, int(measure.textlength(title, font=font)) + 2 * pad)
  page = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(page)
  draw.text((pad, pad), title, fill="black", font=font)
  x = pad
  for caption, picture in panels:
    page.paste(picture, (x, 2 * pad + line))
    draw.text((x, 2 * pad + line + picture.height + 4), caption, fill="black", font=font)
    x += picture.width + pad
  return page


def attention_grid(maps: np.ndarray, labels: list[str], title: str) -> Image.Image:
  """One layer's maps float[heads, L, L] side by side (rows: queries, columns: keys; white 0 to dark blue 1), with
  the tokens along the first head's rows and every head's columns when they fit."""
  heads, length = maps.shape[0], maps.shape[-1]
  cell = int(np.clip(360 // max(length, 1), 3, 18))
  font = _font(max(8, min(12, cell)))
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  labels = labels if cell >= 8 else ["" for _ in labels]
  label_w = max([int(measure.textlength(s, font=font)) for s in labels] + [0]) + 6
  line, pad = int(font.getbbox("Hg")[3]) + 4, 10
  side = length * cell
  top = pad + 2 * line + label_w
  page = Image.new("RGB", (label_w + pad + heads * (side + pad), top + side + pad), "white")
  draw = ImageDraw.Draw(page)
  draw.text((pad, pad), title, fill="black", font=font)
  low, high = np.array([247, 251, 255]), np.array([8, 48, 107])
  for h in range(heads):
    x0 = label_w + pad + h * (side + pad)
    draw.text((x0, pad + line), f"head {h}", fill="black", font=font)
    colors = np.rint(low + np.clip(maps[h], 0, 1)[..., None] * (high - low)).astype(np.uint8)
    page.paste(Image.fromarray(colors).resize((side, side), Image.NEAREST), (x0, top))
    for i, name in enumerate(labels):
      if not name:
        continue
      upright = Image.new("RGB", (int(measure.textlength(name, font=font)) + 2, line), "white")
      ImageDraw.Draw(upright).text((0, 0), name, fill="black", font=font)
      upright = upright.rotate(90, expand=True)
      page.paste(upright, (x0 + i * cell + (cell - upright.width) // 2, top - 3 - upright.height))
      if h == 0:
        draw.text((label_w + pad - 3 - measure.textlength(name, font=font), top + i * cell + (cell - line) // 2 + 1),
                  name, fill="black", font=font)
  return page


def _background(score: float, scale: float) -> str:
  strength = min(abs(score) / scale, 1.0) if scale else 0.0
  r, g, b = POSITIVE if score >= 0 else NEGATIVE
  return f"rgba({r}, {g}, {b}, {0.75 * strength:.3f})"


def highlighted(text: str, spans: list[tuple[int, int]], scores: np.ndarray, tokens: list[str]) -> str:
  """`text` as HTML (escaped) with each token's span shaded by its score: red for, blue against; the token and its
  score show on hover. `spans` are (start, end) offsets into `text`; text outside every span is left plain."""
  scale, out, shown = float(np.abs(scores).max()) if len(scores) else 0.0, [], 0
  for (start, end), score, token in zip(spans, scores, tokens):
    start = max(start, shown)  # a character split over two tokens (byte-level BPE) is drawn once
    if end <= start:
      continue
    out.append(html.escape(text[shown:start]))
    out.append(f'<span style="background: {_background(float(score), scale)}" '
               f'title="{html.escape(token, quote=True)}: {float(score):+.4f}">{html.escape(text[start:end])}</span>')
    shown = end
  rest = text[shown:]
  out.append(f'<span class="cut" title="past the tokenizer\'s max_length">{html.escape(rest)}</span>' if rest else "")
  return "".join(out)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.6; }}
.text {{ font-size: 1.15em; }} .cut {{ color: #999; }} .note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>{title}</h1>
<p class="note">{intro}</p>
{body}
</body></html>
"""


def page(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
  """A whole HTML page: a (heading, highlighted HTML, note) section per example; headings and notes are escaped."""
  body = "\n".join(f'<h2>{html.escape(heading)}</h2>\n<p class="text">{text}</p>\n<p class="note">{html.escape(note)}'
                   f"</p>" for heading, text, note in sections)
  return PAGE.format(title=html.escape(title), intro=html.escape(intro), body=body)


def markdown_cell(text: str) -> str:
  """Text that stays inside one cell of a Markdown table and shows as written."""
  text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
  for c in "`*_[]<>#":
    text = text.replace(c, "\\" + c)
  return text.strip() or "\u2423"  # a visible space for a token of blanks


def markdown_table(tokens: list[str], scores: np.ndarray) -> str:
  """Token attributions as a Markdown table, with a bar per token (TensorBoard's text dashboard renders Markdown
  and drops inline styles, so the shading of the HTML page cannot travel there)."""
  scale = float(np.abs(scores).max()) or 1.0
  rows = ["| token | attribution | |", "|---|---:|---|"]
  for token, score in zip(tokens, scores):
    bar = ("+" if score >= 0 else "\u2212") * round(10 * abs(float(score)) / scale)
    rows.append(f"| {markdown_cell(token)} | {float(score):+.4f} | {bar} |")
  return "\n".join(rows)
