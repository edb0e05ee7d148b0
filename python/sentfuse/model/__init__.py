"""Loading a model folder: its modules.json pipeline and the transformers backbone."""
