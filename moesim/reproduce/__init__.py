"""Published end-to-end runs, simulated and compared: how far moesim is from reality.

``cases`` reads a published case (a scenario plus an ``expect`` block), ``run`` simulates each
and measures the error, ``baseline`` guards those errors against regressions, ``report`` draws
them. Published runs validate the simulator; they never calibrate it.
"""
