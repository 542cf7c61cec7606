"""edge-certd: make IoT devices trust their Azure IoT Edge gateway's root CA."""

# The one place the version lives; pyproject.toml and the Debian package read it from here.
__version__ = "0.1.0"
