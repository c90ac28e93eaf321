"""gan-service: train GANs (Goodfellow et al. 2014), export them to ONNX, serve and sample them without torch.

One import namespace, in floors that import only downwards (docs/design.md, "Layers"):

- ``gan_service.core``: torch-free pieces every floor shares (imaging, paths, atomic writes, onnxruntime sessions)
- ``gan_service.serving``: model directories, latents, the engine, the BentoML service, the offline sampler
- ``gan_service.evaluation``: sample quality in three feature views (torch-free)
- ``gan_service.training``: PyTorch training, presets, export to ONNX
- ``gan_service.cli``: the ``gan`` command

The package carries the shipped models (``gan_service/models``) and the web page as package data.
"""
__version__ = "0.1.0"
