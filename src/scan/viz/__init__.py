"""Drawing: attention over photos (per word or per region) and training curves."""
