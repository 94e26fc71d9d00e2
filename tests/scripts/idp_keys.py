"""A stand-in enterprise IdP whose keys outlive one call, for key rollover in the e2e tests.

usage: idp_keys.py add-key DIR KID ALG       generate a key (RS256 or ES256), keep its private
                                             half in DIR/keys/, rewrite DIR/jwks.json with all keys
       idp_keys.py mint DIR KID ALG ISS AUD USER
                                             print a token signed with that key; USER is in `sub`

jwks.json is replaced atomically (write, then rename), so a server reading it never sees half.
"""
import json, os, sys, time, uuid
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from jwt.algorithms import RSAAlgorithm, ECAlgorithm


def load(path):
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def add_key(d, kid, alg):
    keys = os.path.join(d, "keys")
    os.makedirs(keys, exist_ok=True)
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
           if alg == "RS256" else ec.generate_private_key(ec.SECP256R1()))
    with open(os.path.join(keys, f"{kid}.{alg}.pem"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    jwks = []
    for name in sorted(os.listdir(keys)):
        k_kid, k_alg, _ = name.rsplit(".", 2)
        pub = load(os.path.join(keys, name)).public_key()
        j = json.loads((RSAAlgorithm if k_alg == "RS256" else ECAlgorithm).to_jwk(pub))
        j.update({"kid": k_kid, "use": "sig", "alg": k_alg})
        jwks.append(j)
    tmp = os.path.join(d, "jwks.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"keys": jwks}, f)
    os.replace(tmp, os.path.join(d, "jwks.json"))


def mint(d, kid, alg, iss, aud, user):
    key = load(os.path.join(d, "keys", f"{kid}.{alg}.pem"))
    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": user, "iat": now - 5, "exp": now + 600,
              "jti": str(uuid.uuid4()), "scp": "sip:register"}
    print(jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "add-key":
        add_key(*args)
    elif cmd == "mint":
        mint(*args)
    else:
        sys.exit(f"unknown command {cmd}")
