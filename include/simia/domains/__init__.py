"""Environment domains the experiment can simulate (tool schemas and policy)."""

from simia.domains.telecom import TELECOM

DOMAINS = {TELECOM.name: TELECOM}

__all__ = ["DOMAINS", "TELECOM"]
