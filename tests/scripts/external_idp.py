"""A stand-in enterprise IdP for the e2e tests: PyJWT mints tokens as an external issuer.

usage: external_idp.py DIR ISSUER AUDIENCE USER
Writes DIR/jwks.json (an RSA and an EC key) and prints a JSON object of named tokens: good ones
(RS256, ES256) and forgeries that must be refused.
"""
import json, sys, time
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from jwt.algorithms import RSAAlgorithm, ECAlgorithm

d, iss, aud, user = sys.argv[1:5]
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
other = rsa.generate_private_key(public_exponent=65537, key_size=2048)

def jwk(pub, alg, kid):
    k = json.loads((RSAAlgorithm if alg.startswith("RS") else ECAlgorithm).to_jwk(pub))
    k.update({"kid": kid, "use": "sig", "alg": alg})
    return k

with open(f"{d}/jwks.json", "w") as f:
    json.dump({"keys": [jwk(rsa_key.public_key(), "RS256", "rsa1"),
                        jwk(ec_key.public_key(), "ES256", "ec1")]}, f)

now = int(time.time())
base = {"iss": iss, "aud": aud, "preferred_username": user, "sub": "opaque-id",
        "iat": now - 5, "exp": now + 600, "scp": "sip:register", "azp": "jabber"}
def mint(claims=None, key=rsa_key, alg="RS256", kid="rsa1", **drop):
    c = dict(base, **(claims or {}))
    for k in drop.get("without", []):
        c.pop(k, None)
    return jwt.encode(c, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})

pub_pem = rsa_key.public_key().public_bytes(
    encoding=__import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).Encoding.PEM,
    format=__import__("cryptography.hazmat.primitives.serialization", fromlist=["x"]).PublicFormat.SubjectPublicKeyInfo)
hs = jwt.api_jws.PyJWS()
hs._algorithms["HS256"] = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
hs256 = hs.encode(json.dumps(base).encode(), key="x", algorithm="HS256", headers={"kid": "rsa1"})
# Re-sign with the public key bytes as the HMAC secret (the classic confusion attack).
import hmac, hashlib, base64
h, p, _ = hs256.split(".")
sig = base64.urlsafe_b64encode(hmac.new(pub_pem, f"{h}.{p}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
none_tok = jwt.encode(base, None, algorithm="none", headers={"kid": "rsa1"})

print(json.dumps({
    "rs256": mint(),
    "es256": mint(key=ec_key, alg="ES256", kid="ec1"),
    "wrong_aud": mint({"aud": "someone-else"}),
    "expired": mint({"iat": now - 1000, "exp": now - 100}),
    "unknown_kid": mint(key=other, kid="rogue"),
    "alg_none": none_tok,
    "hs256_public_key": f"{h}.{p}.{sig}",
    "untrusted_issuer": mint({"iss": "https://evil.example"}),
    "no_user": mint(without=["preferred_username"]),
}))
