"""Explanations of trained models: what a model looks at, without code of one's own (scripts/explain.py).

- attribution.py: integrated gradients (batched, checked for completeness) and gradient saliency;
- images.py: both drawn over an image classifier's inputs; tokens.py, texts.py: a text classifier's token
  attributions as highlighted HTML, TensorBoard text and JSON;
- attention.py: attention probabilities per layer and head, captured from the model's own layers;
- inputs.py: raw inputs or misclassified test examples, read as training read its data; run.py ties them together.
"""
