"""minisegnet.nn: Module, Parameter and layers (``import minisegnet.nn as nn``).

``module`` holds Module/Parameter/Sequential and the basic layers; ``conv``, ``pooling``,
``upsample`` and ``roi`` hold the layers over the matching functional ops; ``loss`` the losses.
"""

from .conv import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .module import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .roi import *  # noqa: F401,F403
from .upsample import *  # noqa: F401,F403
