"""Pipeline stages, registered through the ``keras_reid.plugins`` entry point like any plugin
(its target, :mod:`keras_reid.stages.builtin`, imports them; this ``__init__`` imports nothing, so
importing ``stages.base`` or a stage's parts does not run every stage class).

One shape for every stage: a package ``keras_reid/stages/<name>/`` whose ``__init__`` holds
the stage class (its pydantic config, ``needs``/``check``/preflight and registration: what
``keras-reid recipes check`` and the runner's planning import), and whose ``run`` module holds
the stage body, imported by the stage class when the stage runs or is preflighted. Further
modules in the package are named parts of the body (``augment.worker`` and ``augment.ray``,
``evaluate.fusion``, ``train_reid.retrieval_curve``, ...). Parts import from ``base`` and from
each other, never from the package ``__init__``, so the import graph stays a tree. TensorFlow is
imported inside functions where a module is also used without it (say so there).
"""
