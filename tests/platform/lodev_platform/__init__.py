"""Local stand-in for the LifeOmic Platform (AWS IoT Core underneath).

See tests/platform/README.md. The package runs on Debian's /usr/bin/python3
with python3-paho-mqtt and python3-cryptography.
"""

from .api import Platform, PlatformError
from .faults import REQUEST_KINDS

__all__ = ["Platform", "PlatformError", "REQUEST_KINDS"]
