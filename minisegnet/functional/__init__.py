"""minisegnet.functional: every differentiable op (``import minisegnet.functional as F``).

Each family lives in its own module and exports its public names through ``__all__``:
core tensor ops and activations (``basic``), losses (``loss``), convolutions (``conv``),
batch normalisation (``batch_norm``),
pooling and unpooling (``pooling``), upsampling (``upsample``), RoI operators and boxes (``roi``).
"""

from .basic import *  # noqa: F401,F403
from .batch_norm import *  # noqa: F401,F403
from .conv import *  # noqa: F401,F403
from .loss import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .roi import *  # noqa: F401,F403
from .upsample import *  # noqa: F401,F403
