"""vitkit: the harness the notebooks share, one module per concern. The model itself is in ``vit_helpers.py``.

    from vitkit import data, train, plots
    loaders = data.mnist_loaders("./data", invert=True)
    history = train.fit(model, loaders.train, loaders.val, epochs=10)
    plots.training_curves(history)

Modules: ``checks`` (argument checks), ``data`` (loaders, image folders, MNIST IDX, downloads), ``runtime``
(device, seeds, precision, compile), ``train`` (fit, evaluate, History), ``recipes`` (named recipes),
``explain`` (attention maps of any ViT, explainers, faithfulness), ``records`` (hardware, run records),
``plots``. Each imports only ``vit_helpers`` and the modules listed before it; nothing imports back up.
"""
