"""Calibration: microbenchmarks of real kernels and of moesim's own PyTorch code, fitted into a
profile the simulator reads, and the simulator's measured prediction error.

Modules, one job each:

- ``timing``: the timer (warm-up, synchronisation or CUDA events, median of many repeats on a
  rotating pool of random inputs);
- ``records``: the measurement row (the columns of ``calibration/<device>/measurements.csv``);
- ``device``: what the device is (name, catalog GPU id, versions) and the measured CPU spec;
- ``bench_gemm``, ``bench_moe``, ``bench_attention``, ``bench_memory``, ``bench_copy``,
  ``bench_collectives``, ``bench_steps``: the microbenchmarks, each yielding rows;
- ``fit``: measurements → profile (efficiency curves, launch overhead, bandwidths);
- ``validate``: fit on part of the measurements, predict the rest through the cost model and
  ``moesim.sim.run.simulate``, and write the errors into the profile;
- ``report``: the HTML page of predicted against measured;
- ``published``: published kernel tables (``calibration/published/kernels.csv``) → one
  ``kind: published`` profile per GPU, with its in-sample error;
- ``run``: the orchestration behind ``moesim calibrate run``.

Only the benchmark modules import torch, and only when they run: importing this package (and
``fit``, ``validate``, ``report``) works without torch.
"""
