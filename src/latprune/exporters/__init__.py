"""The deliverable: exported artifacts of a slimmed model."""
