"""SASL_SSL test helpers: a throw-away CA and broker certificate (openssl), a private broker with an extra
SASL_SSL listener whose SCRAM users exist from the first start, and clients configured for it."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kafkatools import ROOT, free_port, free_port_pair

MECHANISM = "SCRAM-SHA-512"


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed:\n{r.stderr}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key), PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-noenc", "-keyout", str(key), "-out", str(cert),
             "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


@dataclass
class Certificates:
    ca: Path          # what clients trust (ssl.ca.location)
    keystore: Path    # the broker's PEM keystore: unencrypted PKCS#8 key + certificate chain
    other_ca: Path    # a CA that did not sign the broker certificate


def make_certificates(directory: Path) -> Certificates:
    """A CA, a broker certificate for 127.0.0.1/localhost signed by it, and an unrelated second CA."""
    ca, ca_key = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    _openssl("req", "-newkey", "rsa:2048", "-noenc", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=127.0.0.1", cwd=directory)
    ext = directory / "broker.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-sha256", "-extfile", str(ext), cwd=directory)
    keystore = directory / "broker-keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text() + ca.read_text())
    return Certificates(ca=ca, keystore=keystore, other_ca=other_ca)


class SaslBroker:
    """A private broker (scripts/kafka-local.sh): PLAINTEXT on `port`, controller on port+1, and a SASL_SSL
    listener with SCRAM-SHA-512 on `sasl_port`, user `username` created at format time."""

    def __init__(self, directory: Path, username: str, password: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.certs = make_certificates(directory / "tls")
        self.username, self.password = username, password
        self.port = free_port_pair()
        self.sasl_port = free_port()
        while self.sasl_port in (self.port, self.port + 1):
            self.sasl_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"            # PLAINTEXT (admin side, never the worker)
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"  # SASL_SSL
        props = directory / "sasl.properties"
        props.write_text(
            f"sasl.enabled.mechanisms={MECHANISM}\n"
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            "listener.name.sasl_ssl.ssl.keystore.type=PEM\n"
            f"listener.name.sasl_ssl.ssl.keystore.location={self.certs.keystore}\n"
            "listener.name.sasl_ssl.ssl.client.auth=none\n"
        )
        scram = directory / "scram.txt"
        scram.write_text(f"{MECHANISM}=[name={username},password={password}]\n")
        scram.chmod(0o600)
        self.env = {**os.environ, "KAFKA_LOCAL_PORT": str(self.port), "KAFKA_LOCAL_DIR": str(directory / "kafka"),
                    "KAFKA_LOCAL_EXTRA_PROPS": str(props),
                    "KAFKA_LOCAL_EXTRA_LISTENERS": f"SASL_SSL://{self.sasl_bootstrap}",
                    "KAFKA_LOCAL_SCRAM_FILE": str(scram)}

    @property
    def server_log(self) -> Path:
        return self.dir / "kafka" / "server.log"

    def _script(self, action: str) -> None:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), action], env=self.env,
                           capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"kafka-local.sh {action} failed ({r.returncode}):\n{r.stderr[-3000:]}")

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def client_config(self, password: str | None = None, ca: Path | None = None) -> dict[str, str]:
        """librdkafka properties for a client on the SASL_SSL listener."""
        return {
            "bootstrap.servers": self.sasl_bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password if password is None else password,
            "ssl.ca.location": str(ca or self.certs.ca),
        }

    def worker_env(self, password: str | None = None, ca: Path | None = None, as_json: bool = False
                   ) -> dict[str, str]:
        """The worker's connection variables: one EMBED_KAFKA__CONFIG__* variable per property, or the
        EMBED_KAFKA__CONFIG JSON object."""
        conf = self.client_config(password, ca)
        env = {"EMBED_KAFKA__BOOTSTRAP_SERVERS": conf.pop("bootstrap.servers")}
        if as_json:
            import json

            env["EMBED_KAFKA__CONFIG"] = json.dumps(conf)
        else:
            for k, v in conf.items():
                env["EMBED_KAFKA__CONFIG__" + k.upper().replace(".", "_")] = v
        return env
