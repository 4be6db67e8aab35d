"""``rtbci bench``: the same job through rtbci and its peers, stage by stage, and how it scales.

Modules: :mod:`~rtbci.bench.sender` (the amplifier process), :mod:`~rtbci.bench.peers` (each
row's processor), :mod:`~rtbci.bench.timeflux` (the Timeflux row's own virtualenv),
:mod:`~rtbci.bench.receiver` (stamps every result), :mod:`~rtbci.bench.run` (segments and
figures), :mod:`~rtbci.bench.sweeps`, :mod:`~rtbci.bench.loopback`, :mod:`~rtbci.bench.gpu`,
:mod:`~rtbci.bench.report` (bench.json, bench.md, PNGs) and :mod:`~rtbci.bench.main` (the
command). docs/latency.md and benchmarks/README.md describe the method and the figures.
"""
