"""Workflow builders (``init_*_wf``), and the step priority they share with qsmprep's MultiProc.

Nipype's MultiProc submits the steps that are ready in the graph's topological order, whatever
their cost, so a step off the critical path that claims every core (the GRE→T1w registration)
can hold back the chain that ends in the longest step (the dipole inversion) for its whole
run.  Builders mark the steps of that chain with :func:`prioritise`; the plugin
(:class:`qsmprep.cli.multiproc.OrphanSafeMultiProcPlugin`) submits marked steps first among
those ready.  The order changes when steps run, never what they compute.
"""

#: The node attribute that orders ready steps: higher first, unmarked steps 0.
PRIORITY_ATTR = "qsmprep_priority"


def prioritise(*nodes, level=1):
    """Mark Nipype nodes as on the critical path (:data:`PRIORITY_ATTR` = ``level``)."""
    for node in nodes:
        setattr(node, PRIORITY_ATTR, level)
