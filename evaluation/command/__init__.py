"""The ``hf-sparse-attack`` command (:mod:`.cli`), its offline demo and the digits quickstart."""
