"""A real Mosquitto broker for tests: a plain process on loopback, its own port and config.

`Broker(tmp_path).start()` runs `/usr/sbin/mosquitto -c <conf>` (apt `mosquitto`) on a free
port; `kill()` is a kill -9 (a broker that dies mid-delivery), `start()` again brings it back
on the same port. `with_password(user, password)` makes it refuse anonymous clients, `with_acl(rules)` limits topics.
`Subscriber` collects what a QoS 1 subscription receives; `Client5` is an MQTT 5 client that
reads each PUBACK's reason (how a 5 broker names an ACL refusal); `FakeIngest` plays the server,
publishing receipts with the contract's own functions.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.helpers import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, folder: Path, port: int | None = None, tcp_nodelay: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.tcp_nodelay = tcp_nodelay
        """As deployed: without it Mosquitto holds each last PUBACK ~40 ms (Nagle meets delayed ACK)."""
        self.password_file: Path | None = None
        self.acl_file: Path | None = None
        self.tls: tuple[Path, Path, Path] | None = None
        self.process: subprocess.Popen | None = None
        self.log = self.folder / "mosquitto.log"

    def with_password(self, user: str, password: str) -> "Broker":
        self.password_file = self.folder / "passwords"
        self.password_file.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(self.password_file), user, password], check=True)
        return self

    def add_password(self, user: str, password: str) -> "Broker":
        """Add a login to the password file (`with_password` first); a running broker learns it at
        `reload`."""
        subprocess.run(["mosquitto_passwd", "-b", str(self.password_file), user, password], check=True)
        return self

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files (its listeners stay)."""
        self.process.send_signal(signal.SIGHUP)

    def with_acl(self, rules: str) -> "Broker":
        """Mosquitto ACL rules (e.g. 'pattern write explorer/%u/#'), applied to every listener."""
        self.acl_file = self.folder / "acl"
        self.acl_file.write_text(rules.strip() + "\n")
        return self

    def with_tls(self, ca: Path, cert: Path, key: Path) -> "Broker":
        """Serve MQTT over TLS only, with this CA, certificate and key (see `make_test_ca`)."""
        self.tls = (Path(ca), Path(cert), Path(key))
        return self

    def with_config(self, text: str) -> "Broker":
        """Run this configuration as given (e.g. the shipped deploy/broker/mosquitto.conf)."""
        self.config_text = text
        return self

    def config(self) -> Path:
        conf = self.folder / "mosquitto.conf"
        if getattr(self, "config_text", None) is not None:
            conf.write_text(self.config_text)
            return conf
        # `user`: run as root, mosquitto would switch to the `mosquitto` user, who cannot read
        # pytest's private temporary folders; stay whoever started it.
        lines = [f"user {pwd.getpwuid(os.getuid()).pw_name}",
                 f"listener {self.port} {self.host}", f"log_dest file {self.log}", "log_type all",
                 f"set_tcp_nodelay {str(self.tcp_nodelay).lower()}", "persistence false",
                 "max_inflight_messages 20"]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if self.acl_file is not None:
            lines += [f"acl_file {self.acl_file}"]
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
        conf = self.folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> "Broker":
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config())],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.process.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout_s} s")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


class Subscriber:
    """A QoS 1 subscription to `topic`, collecting (topic, payload bytes) on paho's thread."""

    def __init__(self, broker: Broker, topic: str = "#", username: str | None = None, password: str | None = None,
                 ca: Path | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}")
        if username:
            client.username_pw_set(username, password)
        if ca is not None:
            client.tls_set(ca_certs=str(ca))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("test subscriber: no SUBACK within 10 s")
        self.client = client

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_test_ca(folder: Path, name: str = "test-ca", host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for `host` (IP SAN) signed by it: (ca, cert, key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / f"{name}{suffix}" for suffix in
                                  ("-ca.key", "-ca.crt", "-server.key", "-server.csr", "-server.crt"))
    ext = folder / f"{name}-san.cnf"
    ext.write_text(f"subjectAltName = IP:{host}\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "2", "-subj", f"/CN={name}")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class Client5:
    """A small MQTT 5 client for tests: connect with credentials, publish and read the PUBACK's
    reason (a 5 broker names an ACL refusal there), subscribe, collect what arrives."""

    def __init__(self, broker: Broker, username: str | None = None, password: str | None = None,
                 ca: Path | None = None, client_id: str | None = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        """(topic, payload, retained) in arrival order."""
        self.on_message = None
        """Called (client, topic, payload) on paho's thread after a message is collected."""
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subacks: dict[int, list[str]] = {}
        self._pubacks: dict[int, str] = {}
        self._acked = threading.Condition()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test5-{free_port()}",
                             protocol=mqtt.MQTTv5)
        if username:
            client.username_pw_set(username, password)
        if ca is not None:
            client.tls_set(ca_certs=str(ca))
        client.on_connect = lambda c, u, f, rc, p: self._connected.set()
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("test client: no CONNACK within 10 s")
        self.client = client

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._acked:
            self._subacks[mid] = [str(code) for code in reason_codes]
            self._acked.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self._pubacks[mid] = str(reason_code)
            self._acked.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
        if self.on_message is not None:
            self.on_message(self, message.topic, bytes(message.payload))

    def _wait(self, table: dict, mid: int, what: str, timeout_s: float = 10.0):
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, timeout_s):
                raise RuntimeError(f"test client: no {what} within {timeout_s} s")
            return table.pop(mid)

    def subscribe(self, topic: str) -> list[str]:
        """Subscribe QoS 1; return the SUBACK's reason codes as text ('Granted QoS 1', ...)."""
        return self._wait(self._subacks, self.client.subscribe(topic, qos=1)[1], "SUBACK")

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> str:
        """Publish QoS 1 and wait; return the PUBACK's reason ('Success', 'Not authorized', ...)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(self._pubacks, info.mid, "PUBACK")

    def publish_nowait(self, topic: str, payload: bytes | str) -> None:
        """Publish QoS 1 without waiting (usable from inside `on_message`)."""
        self.client.publish(topic, payload, qos=1)

    def received(self, topic_filter: str | None = None) -> list[tuple[str, bytes, bool]]:
        import paho.mqtt.client as mqtt

        with self._lock:
            return [m for m in self.messages if topic_filter is None or mqtt.topic_matches_sub(topic_filter, m[0])]

    def wait_for(self, condition, timeout_s: float = 20.0) -> bool:
        """Poll `condition(self)` until it holds or `timeout_s` passes; return its last value."""
        return wait_until(lambda: condition(self), timeout_s, every_s=0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FakeIngest:
    """Plays the server in tests: takes every device's detections, feedback and tours (as the shared
    subscription `$share/<group>/...` when `share_group` is given) and, while `auto` is on,
    answers each with a receipt naming it as stored (`device.contracts.receipt.receipt_to_json`,
    QoS 1 on explorer/<device id>/receipt), as the real ingest does after its commit.
    """

    def __init__(self, broker: Broker, username: str | None = None, password: str | None = None,
                 ca: Path | None = None, share_group: str | None = None, auto: bool = True):
        from device.contracts.topics import subscription

        self.auto = auto
        self.records: list[tuple[str, str, str]] = []
        """(device id, kind, record id) of every message taken, in arrival order (resends too)."""
        self._lock = threading.Lock()
        self.client = Client5(broker, username, password, ca)
        self.client.on_message = self._take
        for kind in ("detection", "feedback", "tour"):
            granted = self.client.subscribe(subscription(kind, share_group))
            if granted != ["Granted QoS 1"]:
                raise RuntimeError(f"fake ingest: subscription to {kind} refused: {granted}")

    def _take(self, client: Client5, topic: str, payload: bytes) -> None:
        from device.contracts.detection import parse_payload
        from device.contracts.feedback import parse_feedback
        from device.contracts.topics import parse_topic
        from device.contracts.tour import parse_tour, payload_delivery_id

        device_id, kind = parse_topic(topic)
        if kind == "tour":  # receipted by the state's delivery id, as the real ingest does
            record_id = payload_delivery_id(parse_tour(payload))
        else:
            checked = parse_payload(payload) if kind == "detection" else parse_feedback(payload)
            record_id = checked["detection_id"] if kind == "detection" else checked["feedback_id"]
        with self._lock:
            self.records.append((device_id, kind, record_id))
        if self.auto:
            client.publish_nowait(*self.receipt_message(device_id, {kind: [record_id]}))

    @staticmethod
    def receipt_message(device_id: str, stored: dict[str, list[str]], refused=()) -> tuple[str, str]:
        """(topic, payload) of a receipt built with the contract's own functions."""
        from device.contracts.receipt import receipt_to_json, receipt_topic
        from device.domain import Receipt, utc_now

        receipt = Receipt(device_id, utc_now(), {kind: tuple(ids) for kind, ids in stored.items()}, tuple(refused))
        return receipt_topic(device_id), receipt_to_json(receipt)

    def receipt(self, device_id: str, stored: dict[str, list[str]] | None = None, refused=()) -> str:
        """Publish one receipt and wait for its PUBACK; return the PUBACK's reason."""
        return self.client.publish(*self.receipt_message(device_id, stored or {}, refused))

    def taken(self, kind: str | None = None) -> list[str]:
        """Record ids taken so far (of `kind`, when given), resends included."""
        with self._lock:
            return [record_id for _, k, record_id in self.records if kind is None or k == kind]

    def wait_for(self, condition, timeout_s: float = 20.0) -> bool:
        """Poll `condition(self)` until it holds or `timeout_s` passes; return its last value."""
        return wait_until(lambda: condition(self), timeout_s, every_s=0.02)

    def close(self) -> None:
        self.client.close()
