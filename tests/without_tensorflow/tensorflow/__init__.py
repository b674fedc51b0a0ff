"""TensorFlow, hidden: the TensorBoard servers the tests start have tests/without_tensorflow first on PYTHONPATH
(helpers.env_without_tensorflow), so that `import tensorflow` fails in them as it does in a user's environment
without the `tf` extra (the quick start's). TensorBoard then runs on its own stub of TensorFlow's API and answers
in about 1 s, instead of spending ~5 s importing the TensorFlow that the test extra installs for the SavedModel and
TFLite exports."""

raise ImportError("TensorFlow is hidden from this process (tests/without_tensorflow)")
