"""Policy: schema (model), source positions (locate), loading and validation (load)."""

from policymilter.policy.load import LoadedPolicy, PolicyError, PolicyIssue, load_policy
from policymilter.policy.model import STRICTEST, CheckName, Listener, Policy

__all__ = [
    "STRICTEST",
    "CheckName",
    "Listener",
    "LoadedPolicy",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "load_policy",
]
