"""Training, evaluation, ensemble fitting and bundle export for rtfer (``python -m training --help``).

Needs the ``train`` extra (torch, timm, scikit-learn); the runtime package ``rtfer`` never imports it.
"""
