"""A run's lifecycle, one module per step of it.

``create`` stores a run (QUEUED); ``submit`` stores it and hands it to a run launcher
(``launcher``), returning a ``handle`` to follow it; ``coordinate`` claims a launched run
and runs its coordinator here; ``execute`` runs a stored run's coordinator loop in this
process; ``in_process`` is ``job.execute_in_process()``; ``cancel`` asks a run to stop
from any process; ``resume`` re-runs a failed, canceled or orphaned run, after
``resume_prep`` settled what its old coordinator left in flight and chose the steps to
skip; ``orphans`` finds runs whose coordinator died; ``summary`` reads a run's steps from
its event log.
"""
