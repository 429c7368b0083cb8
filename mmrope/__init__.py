"""mmrope: multidimensional rotary position embeddings in a small vision-language captioner."""

__version__ = "0.1.0"
