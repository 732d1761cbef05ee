"""Running a real model on real data (`drift`): the one part of bninspect that executes a model.

One module per job, the types they share in ``interface``:

- ``interface``: ``LoadedModel`` (a model ready to run and where it came from), ``DataSource``
  (inputs handed out a batch at a time) and ``Probe`` (a TorchScript model's BN inputs);
- ``build``: the model to run: the ``--arch`` callable imported and called, the checkpoint read
  safely and loaded into it, or, with ``--trust`` only, the file's own module
  (``formats.trusted.load_module``, the one place a model is built from a file);
- ``weights``: matching the model's state-dict keys to the checkpoint's (wrapper prefixes) and
  loading the values;
- ``probe``: each BN layer's input in a TorchScript model, which takes no Python hooks;
- ``data``: the inputs, from a data file (``formats.arrays``) or seeded synthetic values;
- ``modules``: the BN modules of a live model, their train/eval modes, its input dtype and output.

Every module here imports torch; nothing outside ``services/drift.py`` imports them.
"""
