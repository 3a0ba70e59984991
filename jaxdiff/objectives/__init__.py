"""Training objectives beyond score_sde's denoising score matching, as pure functions over any
network: classifier-free guidance (:mod:`jaxdiff.objectives.cfg`), EDM preconditioning
(:mod:`jaxdiff.objectives.edm`) and flow matching / rectified flow (:mod:`jaxdiff.objectives.flow`).

Import the submodules directly; this package imports nothing on its own so that each stays
independent of the others.
"""
