"""Hardware and planning: device datasheets, TPU topologies, figures read off compiled
programs, the dry run and its --plan search."""
