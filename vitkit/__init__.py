"""vitkit: the harness the notebooks share, one module per concern. The model itself is in ``vit_helpers.py``.

    from vitkit import data, train, plots
    loaders = data.mnist_loaders("./data", invert=True)
    history = train.fit(model, loaders.train, loaders.val, epochs=10)
    plots.training_curves(history)

Modules, each importing only ``vit_helpers`` and modules listed before it (nothing imports back up):
``checks`` (argument checks), ``stats`` (seed spreads, paired bootstraps, the noise rule), ``baselines`` (the small CNN), ``sources`` (reading data sets, downloads), ``data``
(loaders), ``runtime`` (device, seeds, precision, compile, notebook set-up), ``records`` (hardware, run records),
``config`` (FitConfig: every training knob), ``state`` (History and RunState: where a run stands), ``steps`` (the
pieces of one training step), ``budget`` (how long a run is and where its learning rate stands), ``checkpoint``
(save and resume a run), ``distributed`` (torchrun and DDP), ``train`` (fit, evaluate), ``recipes`` (named
recipes), ``study`` (the data-size study of InductiveBias.ipynb), ``explain`` (attention maps of any ViT, explainers,
faithfulness), ``localize`` (cluttered MNIST, pointing game, box accuracy), ``plots`` (figures), ``explorer`` (the
attention explorer widget).
"""
