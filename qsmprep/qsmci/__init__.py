"""QSM-CI's stage contract: qsmprep's methods as benchmark stages (``qsmprep stage``).

:mod:`qsmprep.qsmci.contract` reads and validates the contract's artifacts and writes the
produced ones; :mod:`qsmprep.qsmci.stages` runs qsmprep's methods on them.  Ready
submissions (``algorithm.yml``, ``run.sh``, ``Dockerfile``) for the default methods are in
the repository's ``qsmci/`` folder.
"""

from qsmprep.qsmci.contract import STAGES, read_inputs
from qsmprep.qsmci.stages import run_stage

__all__ = ["STAGES", "read_inputs", "run_stage"]
