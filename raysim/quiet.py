"""Quiet Ray start-up for the Ray instances raysim starts itself.

Ray 2.60 turns token authentication on for every new local instance and, when the mode was
not chosen explicitly, logs "Token authentication is enabled for this Ray cluster. Set
RAY_AUTH_MODE=disabled to opt out" on every start (``ray._private.authentication.
authentication_token_setup``). raysim makes that same choice explicitly through Ray's own
environment knob, ``RAY_AUTH_MODE=token``, before it starts a local instance: Ray then
behaves exactly as before (token auth on, token generated in ~/.ray/auth_token if missing) and
says nothing. A user's own ``RAY_AUTH_MODE`` is left as it is, and nothing changes when
raysim joins an existing cluster (``cluster.address`` / ``RAY_ADDRESS``).
"""

from __future__ import annotations

import os

AUTH_MODE_ENV = "RAY_AUTH_MODE"


def quiet_local_ray() -> None:
    """Call right before ``ray.init()`` starts a NEW local Ray instance."""
    os.environ.setdefault(AUTH_MODE_ENV, "token")
