"""What-if probes of the default's meta-training and of test-time uses of its encoder, outside distmeta's loop."""
