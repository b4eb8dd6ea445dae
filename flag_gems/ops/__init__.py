"""aten op families, one module each, each registering its ops beside their code.

``registry.load_ops`` imports every module here on the first ``enable()``."""
