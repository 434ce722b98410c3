"""The stages of a training step that the trainer strings together (DAPO Algorithm 1), model-free where they can
be: generation rounds and their scoring (`rounds`), the scored groups (`groups`), dynamic sampling's refill loop
(`dynamic_sampling`), π_old / π_ref and the advantages (`advantages`), and evaluation (`evaluation`)."""
