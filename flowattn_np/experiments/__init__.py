"""The Fashion-MNIST reproduction: the data, the corruptions, parts 1-5, the figures and
the command line."""
