"""mmrope: multidimensional rotary position embeddings in a small vision-language captioner."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `mmrope.load` without importing torch on `import mmrope` (the CLI's --help stays instant)
    if name == "load":
        from mmrope.inference import load

        return load
    raise AttributeError(f"module 'mmrope' has no attribute {name!r}")
