"""The MQTT topic tree: one place for every topic a device or the server publishes on.

    explorer/<device id>/detection   device -> server   a closed detection (detection.py)
    explorer/<device id>/feedback    device -> server   a guide's verdict (feedback.py)
    explorer/<device id>/status      device -> server   retained; the last will says offline
    explorer/<device id>/receipt     server -> device   what the server committed (receipt.py)
    explorer/<device id>/clip        device -> server   a chunk of a clip (clip.py)
    explorer/<device id>/clip-ack    server -> device   how much of a clip the server holds
    explorer/<device id>/clip-request server -> device  retained: the clips the server wants
    explorer/<device id>/tour        device -> server   a tour started or ended (tour.py)

The device id sits in the topic so the broker's ACL can tie each device's credentials to its
own branch of the tree (deploy/broker/acl: `pattern write explorer/%u/detection`, `pattern read
explorer/%u/receipt`), and so the server can check that a payload's device id is its topic's.
"""

from __future__ import annotations

from device.contracts.checks import check_device_id

ROOT = "explorer"
UPSTREAM = ("detection", "feedback", "status", "clip", "tour")
"""What a device publishes (and the ingest subscribes to)."""
DOWNSTREAM = ("receipt", "clip-ack", "clip-request")
"""What the server publishes to one device."""
KINDS = UPSTREAM + DOWNSTREAM


def topic(device_id: str, kind: str) -> str:
    """`explorer/<device id>/<kind>`.

    Raises:
        ValueError: a device id the contract refuses, or an unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"topic: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    check_device_id(device_id, "device_id")
    return f"{ROOT}/{device_id}/{kind}"


def parse_topic(name: str) -> tuple[str, str]:
    """(device id, kind) of a topic in the tree.

    Raises:
        ValueError: naming why the topic is not one of ours.
    """
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 3 or parts[0] != ROOT or parts[2] not in KINDS:
        shown = name[:120] if isinstance(name, str) else repr(name)
        raise ValueError(f"topic {shown!r} is not {ROOT}/<device id>/<{'|'.join(KINDS)}>")
    return check_device_id(parts[1], "topic's device id"), parts[2]


def subscription(kind: str, share_group: str | None = None) -> str:
    """The filter for `kind` from every device; with `share_group`, a shared subscription
    (`$share/<group>/...`) whose messages the broker spreads over the group's members."""
    if kind not in KINDS:
        raise ValueError(f"subscription: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    plain = f"{ROOT}/+/{kind}"
    return f"$share/{share_group}/{plain}" if share_group else plain
