"""The built-in stages: importing this module registers them (it is the target of the
``stages`` entry point in the ``keras_reid.plugins`` group, the path third-party plugins take).

Kept out of the package ``__init__`` so that importing a stage's parts or ``stages.base`` (the
runner, the report and inference read its constants) does not run every stage class: the
import graph, package ``__init__`` files included, stays a tree."""
from keras_reid.stages import (  # noqa: F401
    augment, canonical_poses, evaluate, report, train_generator, train_reid)
