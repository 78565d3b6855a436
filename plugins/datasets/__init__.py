"""Package."""
from . import closed_set, cuhk01, cuhk03, cuhk03_np, dukemtmc, market, msmt17  # noqa: F401,E402
from . import synthetic  # noqa: F401,E402
