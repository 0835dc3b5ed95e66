"""Quiet Ray start-up for the Ray instances raysim starts itself.

Ray 2.60 turns token authentication on for every new local instance and, when
``RAY_AUTH_MODE`` was not set, logs on every start (logger
``ray._private.authentication.authentication_token_setup``)::

    WARNING ... Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled
    to opt out. ...

raysim keeps Ray's choice (token auth on) and drops only that one notice through a filter on
that Ray logger, installed right before raysim's own ``ray.init()`` of a NEW local instance.
The same filter drops Ray's notice that "the object spilling config is specified from an
unstable API", which Ray 2.60 logs whenever ``_system_config`` is given (raysim gives one to
preload its modules in Ray's worker processes; it sets no spilling config).
Every other Ray message, a user's ``RAY_AUTH_MODE``, and joining an existing cluster
(``cluster.address`` / ``RAY_ADDRESS``) are untouched. (Setting ``RAY_AUTH_MODE=token`` from
inside the process does not work for this: Ray reads its configuration once, at import, and
the GCS then rejects the driver.)
"""

from __future__ import annotations

import logging

#: the Ray logger that emits the notice, and the notice's first words
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"
#: Ray's logger of node start-up and its spurious notice about the spilling config
NODE_LOGGER = "ray._private.node"
SPILL_NOTICE = "The object spilling config is specified from an unstable API"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(TOKEN_NOTICE) or msg.startswith(SPILL_NOTICE))


_FILTER = _DropTokenNotice()


def quiet_local_ray() -> None:
    """Call right before ``ray.init()`` starts a NEW local Ray instance (idempotent)."""
    for name in (AUTH_LOGGER, NODE_LOGGER):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
