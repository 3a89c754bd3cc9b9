"""Training, evaluation, ensemble fitting and bundle export for rtfer (``python -m rtfer.training --help``).

Needs the ``train`` extra (torch, timm, scikit-learn). The folder ``training/`` installs as ``rtfer.training``;
the runtime (the rest of ``rtfer``) never imports it.
"""
