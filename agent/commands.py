"""Commands to the gateway: the acknowledgement of a latched hazard alert (docs/mqtt.md).

The desk publishes :class:`~agent.schema.AckCmd` on ``flylead/v1/{gw}/cmd/ack`` (QoS 1);
the agent subscribes to exactly that topic of its own gateway.  Everything arriving there
is treated as hostile until proven otherwise: :meth:`CommandInbox.parse` refuses, with a
:class:`CommandError` that says what and why,

* a payload larger than :data:`~agent.schema.MAX_CMD_BYTES`, not UTF-8 JSON, or not a
  valid schema-v1 :class:`AckCmd` (strict: wrong types, unknown fields, missing version);
* a command on another topic or addressed to another gateway;
* a ``msg_id`` handled before (a replay, or a QoS 1 duplicate: the desk resends an
  unconfirmed acknowledgement with its original ``msg_id``);
* an acknowledgement said to be given after the command was made (``at > ts``).

Whether the alert exists, is open, is latched and matches device and hazard is the hazard
side's check (:meth:`agent.hazards.HazardWatch.acknowledge`), which raises the same error.
"""

from __future__ import annotations

import json
from collections import OrderedDict

from pydantic import ValidationError

from agent.schema import MAX_CMD_BYTES, AckCmd, ack_topic

__all__ = ["CommandError", "CommandInbox", "DuplicateCommand", "MAX_SEEN"]

#: msg_ids remembered for the replay check (the oldest are forgotten first).  An
#: acknowledgement is sent for a person's action on a case; a compound sees a few a day.
MAX_SEEN = 4096


class CommandError(ValueError):
    """A command was refused; the message says which and why (it is logged, never raised
    out of the agent)."""


class DuplicateCommand(CommandError):
    """A ``msg_id`` handled before: a QoS 1 duplicate, the desk's resend, or a replay."""


class CommandInbox:
    """Validation and replay protection of the commands to one gateway.

    Args:
        gateway: this gateway's id.
    """

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.topic = ack_topic(gateway)
        self._seen: OrderedDict[str, None] = OrderedDict()

    def parse(self, topic: str, payload: bytes) -> AckCmd:
        """The acknowledgement in ``payload`` received on ``topic``.

        Raises:
            CommandError: the command is refused (see the module docstring).
        """
        if topic != self.topic:
            raise CommandError(f"command on {topic!r}: this gateway takes commands on {self.topic!r} only")
        if len(payload) > MAX_CMD_BYTES:
            raise CommandError(f"command on {topic}: {len(payload)} bytes, more than {MAX_CMD_BYTES}")
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandError(f"command on {topic}: not UTF-8 JSON ({exc})") from None
        if not isinstance(data, dict):
            raise CommandError(f"command on {topic}: a JSON object expected, got {type(data).__name__}")
        try:
            cmd = AckCmd.model_validate(data, strict=True)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(message)'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise CommandError(f"command on {topic} (msg_id {str(data.get('msg_id'))[:96]!r}): "
                               f"not a valid ack: {problems}") from None
        if cmd.gateway != self.gateway:
            raise CommandError(f"ack {cmd.msg_id}: addressed to gateway {cmd.gateway!r}, this is {self.gateway!r}")
        if cmd.msg_id in self._seen:
            raise DuplicateCommand(f"ack {cmd.msg_id}: msg_id handled before (replay or duplicate): ignored")
        if cmd.at > cmd.ts:
            raise CommandError(f"ack {cmd.msg_id}: acknowledged at {cmd.at} after the command was made ({cmd.ts})")
        return cmd

    def remember(self, msg_id: str) -> None:
        """Mark ``msg_id`` handled (once its command was applied or refused for good)."""
        self._seen[msg_id] = None
        self._seen.move_to_end(msg_id)
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
