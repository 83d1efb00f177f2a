"""A web viewer of Gaussians on viser, rendering with the project's own rasterizer.

``gs-view -m RUN`` shows a trained run (``cli``); ``gs-train --viewer`` shows the scene live while it
trains (``live``).  ``server.GaussianViewer`` is the part both share: one viser server, a render thread
that answers each browser's camera progressively, the training and test cameras as clickable frustums,
and a side-by-side of a selected view with its ground truth.

viser is imported only when a viewer is started, so the trainer does not need it otherwise.
"""
