"""Shared machinery of the locate-then-edit editors (ROME, MEMIT, AlphaEdit).

- ``keys``: subject-token positions, seeded context templates, key/value collection;
- ``targets``: the optimisation of the target vector (ROME's delta, MEMIT's z);
- ``stats``: the layer statistics C = E[k k^T], one forward pass for every layer, cached;
- ``solve``: the closed-form weight updates in float64;
- ``base``: the config fields and the editor skeleton they all share.
"""
