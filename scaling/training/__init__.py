"""The compiled step, optimizer, evaluation, sharding, checkpoints, preemption, and the one loop
that trains lone, packed and branched runs. `scaling.training.run` is the entry that launchers use."""
