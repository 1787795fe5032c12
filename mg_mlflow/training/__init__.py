"""Training: backends (unsloth, hf) behind one small contract, and the recipes that use them."""
