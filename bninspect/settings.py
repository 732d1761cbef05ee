"""Process-wide settings the command line turns on, read by the code it runs.

The services are also a library: a caller's process belongs to the caller, so nothing here is
on unless ``cli.main`` turns it on.
"""

# Freeze what a checkpoint load made (services.common.open_layers, gc.freeze): right for a
# command that exits soon, wrong for a long-running host, whose cyclic garbage from before the
# load would then never be collected.
freeze_loaded_objects = False
