"""An entry point whose import fails: discovery must report it and load the others."""

raise ImportError("foundry_track_faults_broken cannot be imported (on purpose)")
