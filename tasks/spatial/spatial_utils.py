"""What the spatial_* YAMLs name with `!function`; the code lives in `lmms_var.tasks.hooks`."""

from lmms_var.tasks.hooks import *  # noqa: F403
