"""Topic names, topic filters and the subscription tree of the in-process broker (MQTT 5, 4.7-4.8).

A filter's levels are split on "/"; "+" matches one level, "#" the rest (the parent level
too: "a/#" matches "a"); topics starting with "$" are never matched by a wildcard at the first
level (spec 4.7.2), so "#" does not see "$SYS"-style topics. A shared subscription is written
"$share/<group>/<filter>": its group's members take its messages in turn (`SharedGroup`).
"""

from __future__ import annotations

from sync_server.broker.packets import SubOptions


def check_topic_name(topic: str) -> str | None:
    """Why `topic` cannot be published to (empty, a wildcard in it), or None."""
    if not topic:
        return "an empty topic name"
    if "+" in topic or "#" in topic:
        return f"topic name {topic[:120]!r} contains a wildcard"
    return None


def parse_filter(text: str) -> tuple[str | None, str]:
    """(share group or None, topic filter) of a SUBSCRIBE entry.

    Raises:
        ValueError: naming what is wrong with the filter (spec 4.7.1, 4.8.2).
    """
    group, topic_filter = None, text
    if text.startswith("$share/"):
        parts = text.split("/", 2)
        if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not parts[2]:
            raise ValueError(f"shared subscription {text[:120]!r} is not $share/<group>/<filter>")
        group, topic_filter = parts[1], parts[2]
    if not topic_filter:
        raise ValueError("an empty topic filter")
    levels = topic_filter.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ValueError(f"topic filter {topic_filter[:120]!r}: a wildcard must fill a level ('#' the last)")
    return group, topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches the (plain, valid) `topic_filter`."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and wanted[0] in ("+", "#"):
        return False
    for n, level in enumerate(wanted):
        if level == "#":
            return True
        if n >= len(levels) or (level != "+" and level != levels[n]):
            return False
    return len(wanted) == len(levels)


class SharedGroup:
    """The members of one `$share/<group>/<filter>`; `pick()` takes them in turn."""

    def __init__(self, group: str, topic_filter: str):
        self.group, self.topic_filter = group, topic_filter
        self.members: dict[str, SubOptions] = {}
        self._order: list[str] = []
        self._turn = 0

    def add(self, client_id: str, options: SubOptions) -> None:
        self.members[client_id] = options
        self._order = list(self.members)

    def remove(self, client_id: str) -> bool:
        if self.members.pop(client_id, None) is None:
            return False
        self._order = list(self.members)
        return True

    def pick(self) -> tuple[str, SubOptions]:
        client_id = self._order[self._turn % len(self._order)]
        self._turn += 1
        return client_id, self.members[client_id]


class _Node:
    __slots__ = ("children", "plain", "shared")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.plain: dict[str, SubOptions] = {}
        self.shared: dict[str, SharedGroup] = {}


class SubscriptionTree:
    """Every subscription, by topic level, so a publish visits only the branches it can match."""

    def __init__(self):
        self.root = _Node()

    def add(self, topic_filter: str, client_id: str, options: SubOptions, group: str | None = None) -> None:
        node = self.root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        if group is None:
            node.plain[client_id] = options
        else:
            node.shared.setdefault(group, SharedGroup(group, topic_filter)).add(client_id, options)

    def remove(self, topic_filter: str, client_id: str, group: str | None = None) -> bool:
        path = [(None, self.root)]
        for level in topic_filter.split("/"):
            child = path[-1][1].children.get(level)
            if child is None:
                return False
            path.append((level, child))
        node = path[-1][1]
        if group is None:
            removed = node.plain.pop(client_id, None) is not None
        else:
            shared = node.shared.get(group)
            removed = shared is not None and shared.remove(client_id)
            if shared is not None and not shared.members:
                del node.shared[group]
        for (level, child), (_, parent) in zip(reversed(path[1:]), reversed(path[:-1])):
            if child.children or child.plain or child.shared:
                break
            del parent.children[level]  # prune the emptied branch
        return removed

    def match(self, topic: str) -> tuple[list[tuple[str, SubOptions]], list[SharedGroup]]:
        """The plain (client id, options) and the shared groups whose filters match `topic`."""
        levels = topic.split("/")
        plain: list[tuple[str, SubOptions]] = []
        groups: list[SharedGroup] = []
        dollar = topic.startswith("$")
        stack = [(self.root, 0)]
        while stack:
            node, depth = stack.pop()
            wild = depth > 0 or not dollar
            hashed = node.children.get("#") if wild else None
            if hashed is not None:  # '#' also matches the parent level: 'a/#' matches 'a'
                plain.extend(hashed.plain.items())
                groups.extend(hashed.shared.values())
            if depth == len(levels):
                plain.extend(node.plain.items())
                groups.extend(node.shared.values())
                continue
            child = node.children.get(levels[depth])
            if child is not None:
                stack.append((child, depth + 1))
            plus = node.children.get("+") if wild else None
            if plus is not None:
                stack.append((plus, depth + 1))
        return plain, groups
