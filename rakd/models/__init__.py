"""Tokenizer, named tiny configs, loading/saving, and layer-subset initialisation."""
