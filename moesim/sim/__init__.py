"""The discrete-event simulator: ranks with compute and communication streams, links shared by
max-min fair flows, collectives built from flows, pipeline schedules and MoE routing load.

Nothing is imported here on purpose: ``moesim.sim.profile`` and ``moesim.sim.costmodel`` (the
time of one op on one device) must stay importable without SimPy, for the calibration code.
The entry point is ``moesim.sim.run.simulate(scenario) -> Result``.
"""
