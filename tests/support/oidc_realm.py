"""A stand-in Keycloak realm for the login tests: ``python oidc_realm.py USERS_JSON`` (MONAI Label venv).

Serves, on 127.0.0.1 (port printed as the first line of standard output), what medseg uses of a
Keycloak realm at ``/realms/test``: the OpenID discovery document, a JWKS with one RSA key made at
start, and a token endpoint for the password grant (Keycloak's answers: 401 ``invalid_grant`` for a
wrong password, an RS256 access token with ``preferred_username`` and ``realm_access.roles``
otherwise). For the tests, ``GET /mint?user=U&roles=R1,R2&exp=SECONDS[&forge=1]`` signs any token
(``exp`` relative to now, negative: expired; ``forge``: signed by another key under the same ``kid``;
``client``: the application it is issued to, its ``azp``, default ``monailabel``; empty: none).
USERS_JSON maps names to ``[password, [roles...]]``. Runs until killed.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "stand-in-key"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
USERS: dict[str, list] = json.loads(sys.argv[1])


def mint(issuer: str, user: str, roles: list[str], exp: float, forge: bool = False, client: str = "") -> str:
    """An access token as Keycloak issues it to ``client`` (its ``azp``; ``aud`` is Keycloak's "account")."""
    now = int(time.time())
    claims = {
        "iss": issuer,
        "sub": f"id-{user}",
        "aud": "account",
        **({"azp": client} if client else {}),
        "preferred_username": user,
        "realm_access": {"roles": roles + ["offline_access"]},
        "iat": now,
        "exp": now + int(exp),
    }
    return jwt.encode(claims, OTHER_KEY if forge else KEY, algorithm="RS256", headers={"kid": KID})


class Handler(BaseHTTPRequestHandler):
    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/realms/test/.well-known/openid-configuration":
            self._json(
                200,
                {
                    "issuer": self.base,
                    "jwks_uri": f"{self.base}/protocol/openid-connect/certs",
                    "token_endpoint": f"{self.base}/protocol/openid-connect/token",
                },
            )
        elif url.path == "/realms/test/protocol/openid-connect/certs":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
            self._json(200, {"keys": [{**jwk, "kid": KID, "use": "sig", "alg": "RS256"}]})
        elif url.path == "/mint":
            q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            roles = [r for r in q.get("roles", "").split(",") if r]
            token = mint(
                self.base,
                q["user"],
                roles,
                float(q.get("exp", 300)),
                forge=q.get("forge") == "1",
                client=q.get("client", "monailabel"),
            )
            self._json(200, {"access_token": token})
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/realms/test/protocol/openid-connect/token":
            self._json(404, {"error": "not found"})
            return
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        entry = USERS.get(form.get("username", ""))
        if form.get("grant_type") != "password" or not form.get("client_id"):
            self._json(400, {"error": "invalid_request"})
        elif entry is None or entry[0] != form.get("password"):
            self._json(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
        else:
            token = mint(self.base, form["username"], entry[1], 300, client=form["client_id"])
            self._json(200, {"access_token": token, "token_type": "Bearer", "expires_in": 300})

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
