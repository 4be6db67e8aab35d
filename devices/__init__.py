"""Stream sources: LSL inlets, the simulated amplifier, file replay (``rtbci.devices``)."""
