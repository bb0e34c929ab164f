"""Training machinery beside the LightningModules: run folders, resume, locks and checkpoint I/O."""
