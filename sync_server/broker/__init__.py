"""An MQTT 5 broker in pure Python (asyncio, stdlib only) for `explorer-server run` without Mosquitto.

    wire.py        MQTT 5 data types: variable byte integers, strings, properties, reason codes
    packets.py     every packet as a dataclass, encoded and decoded
    topics.py      topic names and filters, the subscription tree, shared groups
    sessions.py    sessions, queues towards each client, retained messages, routing
    connection.py  one client's connection: CONNECT, then its packets in order
    server.py      `OwnBroker`: the asyncio loop in a daemon thread, keepalives, expiries
    persist.py     sessions and retained messages across a clean restart (SQLite)

Loopback and laptops only: no TLS, no authentication, no ACL (server.py says what else it
leaves out). Devices in the field talk to Mosquitto as shipped in deploy/broker/.
"""

from sync_server.broker.server import OwnBroker

__all__ = ["OwnBroker"]
