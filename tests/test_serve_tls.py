"""HTTPS: scripts/serve.py with --ssl_certfile/--ssl_keyfile serves over TLS with a certificate made here.

A client that trusts that certificate gets predictions equal to the export's own; one that does not trust it
refuses the server, and plain HTTP to the TLS port gets no answer.
"""

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests import serving
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")
pytest.importorskip("cryptography", reason="the `test` extra is not installed: pip install -e '.[test]'")


def self_signed(directory) -> tuple[str, str]:
  """(certificate, private key) PEM files for 127.0.0.1 and localhost, valid for a day."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "research test server")])
  now = datetime.datetime.now(datetime.timezone.utc)
  certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                 .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                 .not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                 .sign(key, hashes.SHA256()))
  cert_file, key_file = directory / "cert.pem", directory / "key.pem"
  cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
  key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
  key_file.chmod(0o600)
  return str(cert_file), str(key_file)


def test_https_with_a_self_signed_certificate(tmp_path_factory, tmp_path):
  from research.serve import Predictor

  export_dir = serving.export_smoke(tmp_path_factory, "mnist_mlp")
  cert, key = self_signed(tmp_path)
  pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  want = Predictor.load(export_dir).predict({"image": pixels})["probabilities"]
  server = Server("--model", f"mnist={export_dir}", "--no_auth", "--ssl_certfile", cert, "--ssl_keyfile", key)
  try:
    assert server.url.startswith("https://127.0.0.1:")
    request = urllib.request.Request(server.url + "/v1/models/mnist:predict",
                                     json.dumps({"instances": pixels.tolist()}).encode(),
                                     {"Content-Type": "application/json"})
    trusting = ssl.create_default_context(cafile=cert)
    with urllib.request.urlopen(request, timeout=60, context=trusting) as answer:
      assert answer.status == 200
      got = np.array([p["probabilities"] for p in json.loads(answer.read())["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    with pytest.raises(urllib.error.URLError) as refused:  # the system's CAs do not know this certificate
      urllib.request.urlopen(server.url + "/healthz", timeout=60, context=ssl.create_default_context())
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises(OSError):  # plain HTTP: the TLS port answers no HTTP
      urllib.request.urlopen(server.url.replace("https://", "http://") + "/healthz", timeout=60)
    with urllib.request.urlopen(server.url + "/healthz", timeout=60, context=trusting) as answer:
      assert answer.status == 200  # still serving
  finally:
    code, err = server.stop()
  assert code == 0 and "Traceback" not in err, err[-3000:]
