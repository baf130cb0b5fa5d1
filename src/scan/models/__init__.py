"""Encoders and the SCAN model: image regions and caption words into one joint space (paper section 3)."""
