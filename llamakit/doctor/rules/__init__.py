"""Pure rules: each takes the gathered Facts (and the checks/ tables) and returns one CheckResult with its fix.
common.py holds what they share; software.py, host.py and fit.py the rules by subject. Everything is re-exported
here, so `from llamakit.doctor import rules as R; R.rule_gpus(facts)` reaches any of them."""

from llamakit.doctor.rules.common import *  # noqa: F401,F403
from llamakit.doctor.rules.common import __all__ as _common
from llamakit.doctor.rules.fit import *  # noqa: F401,F403
from llamakit.doctor.rules.fit import __all__ as _fit
from llamakit.doctor.rules.host import *  # noqa: F401,F403
from llamakit.doctor.rules.host import __all__ as _host
from llamakit.doctor.rules.software import *  # noqa: F401,F403
from llamakit.doctor.rules.software import __all__ as _software

__all__ = [*_common, *_software, *_host, *_fit]
