"""Things, certificates and ownership tokens (fleet provisioning).

Kept in `registry.json` in the working directory so devices provisioned
against one run of the emulator can connect to the next; the broker plugin
learns which certificate belongs to which thing from the identities file.
"""

import json
import secrets
import threading
import time
import uuid

from .util import write_json_atomic

TOKEN_TTL = 3600.0  # AWS: a certificate ownership token lasts one hour.
REQUIRED_PARAMETERS = ("SerialNumber", "Manufacturer", "Name", "Model")


class RegistryError(Exception):
    """A RegisterThing rejection: AWS's status code, error code and message."""

    def __init__(self, status_code, error_code, message):
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message


class Registry:
    def __init__(self, path, account, on_identities_changed):
        self.path = path
        self.account = account
        self.token_ttl = TOKEN_TTL
        self._on_identities_changed = on_identities_changed
        self._lock = threading.RLock()
        self._things = {}        # thing name -> record
        self._certificates = {}  # certificate id -> record
        self._tokens = {}        # token -> {"certificateId", "expires"}
        self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        if data.get("account") == self.account:
            self._things = data.get("things", {})
            self._certificates = data.get("certificates", {})

    def _save(self):
        write_json_atomic(self.path, {
            "account": self.account,
            "things": self._things,
            "certificates": self._certificates,
        })
        self._on_identities_changed(self.identities())

    def identities(self):
        """certificate id -> thing name, for every registered certificate."""
        with self._lock:
            return {cid: c["thing"] for cid, c in self._certificates.items() if c.get("thing")}

    def thing_of_identity(self, identity):
        with self._lock:
            cert = self._certificates.get(identity)
            return cert.get("thing") if cert else None

    def add_certificate(self, certificate_id, certificate_pem, mode, client_id):
        """Records an issued certificate; returns its ownership token."""
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._certificates[certificate_id] = {
                "certificateId": certificate_id,
                "certificatePem": certificate_pem,
                "mode": mode,
                "issuedTo": client_id,
                "issuedAt": time.time(),
                "thing": None,
            }
            self._tokens[token] = {"certificateId": certificate_id,
                                   "expires": time.monotonic() + self.token_ttl}
            self._save()
        return token

    def expire_tokens(self):
        """Makes every outstanding ownership token stale (fault switch)."""
        with self._lock:
            for t in self._tokens.values():
                t["expires"] = 0.0

    def register(self, template, token, parameters):
        """RegisterThing: returns the thing name; raises RegistryError."""
        if not isinstance(token, str) or not token:
            raise RegistryError(400, "InvalidCertificateOwnershipToken",
                                "Certificate ownership token cannot be empty.")
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise RegistryError(400, "InvalidParameters", "parameters must be an object")
        missing = [p for p in REQUIRED_PARAMETERS if p not in parameters]
        if missing:
            raise RegistryError(400, "InvalidParameters",
                                f"Template {template} requires parameters: {', '.join(missing)}")
        for key, value in parameters.items():
            if not isinstance(value, str):
                raise RegistryError(400, "InvalidParameters",
                                    f"Parameter {key} must be a string")
        if not parameters["SerialNumber"]:
            raise RegistryError(400, "InvalidParameters", "Parameter SerialNumber is empty")
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                raise RegistryError(400, "InvalidCertificateOwnershipToken",
                                    "Certificate ownership token is invalid.")
            if entry["expires"] <= time.monotonic():
                del self._tokens[token]
                raise RegistryError(400, "InvalidCertificateOwnershipToken",
                                    "Certificate ownership token has expired.")
            del self._tokens[token]
            # The same device (manufacturer, model, serial number) keeps its
            # thing when it provisions again; the new certificate is attached.
            key = (parameters["Manufacturer"], parameters["Model"], parameters["SerialNumber"])
            name = next((n for n, t in self._things.items()
                         if (t["parameters"].get("Manufacturer"), t["parameters"].get("Model"),
                             t["parameters"].get("SerialNumber")) == key), None)
            if name is None:
                name = f"{self.account}:{uuid.uuid4()}"
                self._things[name] = {"thingName": name, "template": template,
                                      "registeredAt": time.time(), "certificates": []}
            thing = self._things[name]
            thing["parameters"] = dict(parameters)
            thing["certificates"].append(entry["certificateId"])
            self._certificates[entry["certificateId"]]["thing"] = name
            self._save()
            return name

    def things(self):
        with self._lock:
            return json.loads(json.dumps(list(self._things.values())))

    def has_thing(self, name):
        with self._lock:
            return name in self._things

    def certificates(self):
        with self._lock:
            return [{k: v for k, v in c.items() if k != "certificatePem"}
                    for c in self._certificates.values()]
