"""Package."""
from . import face  # noqa: F401,E402
