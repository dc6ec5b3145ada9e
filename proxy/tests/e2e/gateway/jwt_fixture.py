#!/usr/bin/python3
"""Tokens, keys and a JWKS HTTPS server for the gateway's JWT tests, made with PyJWT and
python3-cryptography (Debian packages python3-jwt, python3-cryptography).

  jwt_fixture.py gen DIR ISSUER AUDIENCE   keys, TLS cert, jwks*.json, tokens.json in DIR
  jwt_fixture.py serve DIR                 HTTPS on 127.0.0.1 (OS-assigned port) serving
                                           DIR/served.json; prints "port N", then "hit" per GET
"""

import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import ssl
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk(alg_cls, key, kid, alg):
    d = json.loads(alg_cls.to_jwk(key.public_key()))
    d.update({"kid": kid, "alg": alg, "use": "sig"})
    return d


def tls_cert(out):
    """A CA and a server certificate for 127.0.0.1 and api.example.test signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.DNSName("api.example.test")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    with open(os.path.join(out, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(os.path.join(out, "server.pem"), "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(os.path.join(out, "server-key.pem"), "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def gen(out, issuer, audience):
    rsa1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec1 = ec.generate_private_key(ec.SECP256R1())
    keys1 = [jwk(RSAAlgorithm, rsa1, "rsa-1", "RS256"), jwk(ECAlgorithm, ec1, "ec-1", "ES256")]
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump({"keys": keys1}, f)
    with open(os.path.join(out, "jwks-rotated.json"), "w") as f:
        json.dump({"keys": keys1 + [jwk(RSAAlgorithm, rsa2, "rsa-2", "RS256")]}, f)
    tls_cert(out)

    now = int(time.time())
    good = {"iss": issuer, "aud": audience, "sub": "alice", "iat": now, "exp": now + 600}

    def sign(key, alg, kid, **changes):
        claims = dict(good, **changes)
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    valid = sign(rsa1, "RS256", "rsa-1")
    head, body, sig = valid.split(".")
    forged = b64(json.dumps(dict(good, sub="admin")).encode())
    rsa_pub_pem = rsa1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_head = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    hs_sig = b64(hmac.new(rsa_pub_pem, f"{hs_head}.{body}".encode(), hashlib.sha256).digest())
    tokens = {
        "valid_rs256": valid,
        "valid_es256": sign(ec1, "ES256", "ec-1"),
        "valid_bob": sign(rsa1, "RS256", "rsa-1", sub="bob"),
        "expired": sign(rsa1, "RS256", "rsa-1", iat=now - 7200, exp=now - 3600),
        "wrong_audience": sign(rsa1, "RS256", "rsa-1", aud="billing"),
        "wrong_issuer": sign(rsa1, "RS256", "rsa-1", iss="https://evil.test"),
        "tampered": f"{head}.{forged}.{sig}",
        "alg_none": jwt.encode(good, None, algorithm="none"),
        # Algorithm confusion: HMAC keyed with the RSA public key, under the RSA key's kid.
        "hs256_with_rsa_public_key": f"{hs_head}.{body}.{hs_sig}",
        "es256_header_on_rsa_signature": valid.replace(
            head, b64(json.dumps({"alg": "ES256", "kid": "rsa-1"}).encode()), 1),
        "rotated_kid": sign(rsa2, "RS256", "rsa-2", sub="bob"),
        "random_kids": [sign(rsa2, "RS256", f"random-{i}") for i in range(50)],
    }
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump(tokens, f)


def serve(directory):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(os.path.join(directory, "served.json"), "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print("hit", flush=True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(directory, "server.pem"),
                        os.path.join(directory, "server-key.pem"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
