"""policy-milter: the site's mail policy, applied by Postfix through the milter protocol."""

__version__ = "0.1.0"
