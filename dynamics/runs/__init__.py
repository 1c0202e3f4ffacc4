"""Entry-point logic of the experiment scripts (``experiments/*.py`` only call ``main``)."""
